/**
 * MoE-Pruner's expert-wise distillation on a tiny two-layer LM (d 16, 4 SwiGLU experts of 12, top-2):
 * the teacher records every routed (token, expert) row with the expert's output computed by hand;
 * the unpruned model has loss 0 and distilling it changes no weight; after pruning the loss is
 * positive, falls with the steps, and every pruned weight stays zero; zero steps change nothing;
 * the one-line errors.
 */
import { activate, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { TINY_MOE, tinyMoeLm } from '../test/models.js';
import { testRegistry } from '../test/registry.js';
import { asMlpBank } from './bank.js';
import { collectExpertTargets, distilExperts, distillationLoss } from './expert-distill.js';
import { moePrune } from './moe-pruner.js';
import { RoutingObserver } from './observer.js';
import { type Model, moeLayers, type SpecModel, sliceExperts } from './surgery.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const { D } = TINY_MOE;
const source = (expert?: Record<string, unknown>): SpecModel => tinyMoeLm(registry, 2, expert);

/** Windows of 9 tokens (8 inputs + 1 target). */
const windows = Array.from({ length: 4 }, (_, w) => Int32Array.from({ length: 9 }, (_, i) => (w * 11 + i * 7 + 3) % 32));

function prunedCopy(sparsity: number): SpecModel {
  const src = source();
  const obs = new RoutingObserver({ hidden: true });
  obs.observe(src.model, tf.tensor2d(Int32Array.from(windows.flatMap((w) => [...w.subarray(0, 8)])), [4, 8], 'int32'));
  moePrune(obs, src, { sparsity });
  return src;
}

const zeros = (m: Model) =>
  moeLayers(m).map((l) => {
    const b = asMlpBank(l.layer.experts, l.path, 'test');
    return [b.w1, b.w2, b.w3!].map((v) => Array.from(v.dataSync()).flatMap((x, i) => (x === 0 ? [i] : [])));
  });

describe('expert-wise distillation (MoE-Pruner recovery)', () => {
  it('the teacher records every routed row, with f_e(x) = (silu(x W1) ⊙ x W3) W2 of the unpruned expert', () => {
    const { model } = source();
    const targets = collectExpertTargets(model, windows, { batchSize: 3 });
    expect(targets.map((t) => t.path)).toEqual(['transformer.layers.0.ffn', 'transformer.layers.1.ffn']);
    for (const t of targets) {
      expect(t.rows.reduce((a, b) => a + b, 0)).toBe(4 * 8 * 2); // every token, top-2
      const bank = asMlpBank(moeLayers(model).find((l) => l.path === t.path)!.layer.experts, t.path, 'test');
      const e = t.rows.findIndex((n) => n > 0);
      const x = tf.tensor2d(t.inputs[e]!.subarray(0, D), [1, D]);
      const pick = (w: tf.Variable) => tf.reshape(tf.gather(w, [e]), [w.shape[1]!, w.shape[2]!]) as tf.Tensor2D;
      const want = tf.matMul(tf.mul(activate(tf.matMul(x, pick(bank.w1)), 'silu'), tf.matMul(x, pick(bank.w3!))), pick(bank.w2)).dataSync();
      for (let j = 0; j < D; j++) expect(t.outputs[e]![j]).toBeCloseTo(want[j]!, 5);
    }
    const capped = collectExpertTargets(model, windows, { maxRowsPerExpert: 3 });
    for (const t of capped) for (const n of t.rows) expect(n).toBeLessThanOrEqual(3);
  });

  it('the unpruned model has loss 0 and distilling it changes no weight', () => {
    const { model } = source();
    const targets = collectExpertTargets(model, windows);
    expect(distillationLoss(model, targets)).toBe(0);
    const before = model.stateDict().map(([n, v]) => [n, Array.from(v.dataSync())] as const);
    const r = distilExperts(model, targets, { steps: 3, lr: 1e-2 });
    expect(r.losses).toEqual([0, 0, 0, 0]);
    expect(r.masked).toBe(0);
    const after = new Map(model.stateDict());
    for (const [n, v] of before) expect(Array.from(after.get(n)!.dataSync())).toEqual(v);
  });

  it('after pruning: the loss is positive, falls with the steps, and every pruned weight stays zero', () => {
    const teacher = source();
    const targets = collectExpertTargets(teacher.model, windows);
    const student = prunedCopy(0.5);
    const pruned = zeros(student.model);
    const start = distillationLoss(student.model, targets);
    expect(start).toBeGreaterThan(0);
    const r = distilExperts(student.model, targets, { steps: 20, lr: 1e-2 });
    expect(r.losses).toHaveLength(21);
    expect(r.losses[0]).toBeCloseTo(start, 5);
    expect(r.losses.at(-1)!).toBeLessThan(0.5 * start);
    expect(r.masked).toBe(pruned.flat(2).length);
    expect(distillationLoss(student.model, targets)).toBeCloseTo(r.losses.at(-1)!, 5);
    // The mask holds: the same weights are zero (and no more: the others moved).
    expect(zeros(student.model)).toEqual(pruned);
  });

  it('zero steps change nothing', () => {
    const teacher = source();
    const targets = collectExpertTargets(teacher.model, windows);
    const student = prunedCopy(0.25);
    const before = student.model.stateDict().map(([, v]) => Array.from(v.dataSync()));
    const r = distilExperts(student.model, targets, { steps: 0 });
    expect(r.losses).toHaveLength(1);
    expect(student.model.stateDict().map(([, v]) => Array.from(v.dataSync()))).toEqual(before);
  });

  it('one-line errors: bad steps or rate, a teacher of another expert count, a bank it cannot read, no windows', () => {
    const src = source();
    const targets = collectExpertTargets(src.model, windows);
    expect(() => distilExperts(src.model, targets, { steps: -1 })).toThrow(/distillation steps must be a non-negative integer, got -1/);
    expect(() => distilExperts(src.model, targets, { steps: 1, lr: 0 })).toThrow(/learning rate must be positive/);
    const sliced = sliceExperts(registry, src, new Map(moeLayers(src.model).map((l) => [l.path, [0, 1, 2]])));
    expect(() => distilExperts(sliced.model, targets, { steps: 1 })).toThrow(
      /transformer\.layers\.0\.ffn: the teacher recorded 4 experts but the layer has 3 \(distil before removing experts\)/,
    );
    expect(() => collectExpertTargets(src.model, [])).toThrow(/no calibration windows/);
    const other = source({ type: 'sigma-moe', size: 4 });
    expect(() => collectExpertTargets(other.model, windows)).toThrow(/expert distillation needs an mlp \/ glu expert bank/);
  });
});
