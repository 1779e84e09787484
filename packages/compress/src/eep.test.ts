/**
 * EEP on a tiny two-layer LM (d 16, 6 SwiGLU experts, top-2 renormalised): the router mapping with a
 * selection R equals slicing the kept experts; R = I leaves the model unchanged; the search is
 * deterministic for a seed, its best loss never increases, it never ends worse than a starting
 * keep-set, and the loss it reports is the sliced model's. The merging phase starts at the sliced
 * model (0 generations: the same loss and weights), never ends worse than it, is deterministic, and
 * its model equals `reduceExperts` with the M and R it reports (expert g = Σ_j M_gj expert_j).
 */
import { buildModel, forwardContext, type NodeSpec, Rng, type RouterLogitEdit, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../test/registry.js';
import { eepMerge, eepSearch, keepMapping, routerRemap } from './eep.js';
import { type Model, moeLayers, reduceExperts, type SpecModel, sliceExperts } from './surgery.js';
import { windowsLoss } from './windows.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const E = 6;

function source(renormalize = true): SpecModel {
  const spec: NodeSpec = {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: 16,
    contextLength: 8,
    stack: { groupSize: 2, repeats: 1 },
    block: {
      type: 'transformer',
      attention: { type: 'mha', heads: 2 },
      ffn: { type: 'moe', experts: E, router: { type: 'softmax-topk', k: 2, renormalize }, expert: { type: 'glu', hidden: 12 } },
    },
  };
  return { spec, model: buildModel<Model>(spec, registry, 7) };
}

const windows = Array.from({ length: 6 }, (_, w) => Int32Array.from({ length: 9 }, (_, i) => (w * 13 + i * i * 3 + 1) % 32));
const ids = tf.tensor2d(
  Int32Array.from({ length: 3 * 8 }, (_, i) => (i * 11 + 5) % 32),
  [3, 8],
  'int32',
);

function logits(model: Model, edits?: Map<string, RouterLogitEdit>): Float32Array {
  return tf.tidy(() => model.forward(ids, forwardContext(new Rng(0), false, edits ? { routerLogitEdits: edits } : {})).dataSync() as Float32Array);
}
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

describe('EEP router mapping', () => {
  it('a selection R equals slicing the kept experts (renormalised top-k); R = I changes nothing', () => {
    const src = source();
    const keep = new Map([
      ['transformer.layers.0.ffn', [0, 2, 3, 5]],
      ['transformer.layers.1.ffn', [1, 2, 4]],
    ]);
    const sliced = sliceExperts(registry, src, keep);
    const remapped = logits(src.model, new Map([...keep].map(([p, k]) => [p, routerRemap(keepMapping(k, E))])));
    expect(maxDiff(remapped, logits(sliced.model))).toBeLessThan(1e-4);
    const I = keepMapping([0, 1, 2, 3, 4, 5], E);
    const same = logits(src.model, new Map(moeLayers(src.model).map((l) => [l.path, routerRemap(I)])));
    expect(maxDiff(same, logits(src.model))).toBeLessThan(1e-5);
  });

  it('bad mappings are one-line errors', () => {
    expect(() => routerRemap([[1, 0]])).toThrow(/the router mapping must be square \(1 × 1\)/);
    expect(() => routerRemap([[-1]])).toThrow(/the router mapping must be non-negative/);
    const src = source();
    expect(() => logits(src.model, new Map([['transformer.layers.0.ffn', routerRemap(keepMapping([0], 2))]]))).toThrow(
      /the router mapping is 2 × 2 but the layer has 6 experts/,
    );
  });
});

describe('eepSearch', () => {
  it('is deterministic for a seed; the best loss never increases; it reports the sliced model’s loss', () => {
    const src = source();
    const o = { ratio: 0.5, population: 4, generations: 3, seed: 2 };
    const a = eepSearch(src.model, windows, o);
    const b = eepSearch(src.model, windows, o);
    expect(b.keep).toEqual(a.keep);
    expect(b.history).toEqual(a.history);
    expect(a.history).toHaveLength(4);
    for (let i = 1; i < a.history.length; i++) expect(a.history[i]!).toBeLessThanOrEqual(a.history[i - 1]!);
    expect(a.loss).toBe(a.history.at(-1));
    expect(a.evaluations).toBeGreaterThan(4);
    for (const k of a.keep.values()) expect(k).toHaveLength(3);
    const sliced = sliceExperts(registry, src, a.keep);
    expect(windowsLoss(sliced.model, windows, 8)).toBeCloseTo(a.loss, 4);
    expect(a.baseLoss).toBeCloseTo(windowsLoss(src.model, windows, 8), 6);
  });

  it('never ends worse than a starting keep-set', () => {
    const src = source();
    const start = new Map(moeLayers(src.model).map((l) => [l.path, [0, 1, 2]]));
    const startLoss = eepSearch(src.model, windows, { ratio: 0.5, population: 2, generations: 0, init: [start, start] }).loss;
    const r = eepSearch(src.model, windows, { ratio: 0.5, population: 4, generations: 2, seed: 5, init: [start] });
    expect(r.loss).toBeLessThanOrEqual(startLoss);
  });

  it('one-line errors: ratio, population, too few experts left, a wrong starting keep-set', () => {
    const src = source();
    expect(() => eepSearch(src.model, windows, { ratio: 1 })).toThrow(/the pruning ratio must be in \(0, 1\), got 1/);
    expect(() => eepSearch(src.model, windows, { ratio: 0.5, population: 1 })).toThrow(/the population must be an integer of at least 2, got 1/);
    expect(() => eepSearch(src.model, windows, { ratio: 0.9 })).toThrow(
      /transformer\.layers\.0\.ffn: 1 experts would be left in this layer, fewer than the router's top-k = 2; keep at least 2/,
    );
    expect(() => eepSearch(src.model, windows, { ratio: 0.5, init: [new Map([['transformer.layers.0.ffn', [0]]])] })).toThrow(
      /transformer\.layers\.0\.ffn: a starting keep-set must keep 3 experts/,
    );
  });
});

describe('EEP merging phase', () => {
  const keepOf = (model: Model) => new Map(moeLayers(model).map((l, i) => [l.path, i === 0 ? [0, 2, 5] : [1, 3, 4]]));
  const weights = (m: Model) => m.stateDict().map(([n, v]) => [n, Array.from(v.dataSync())] as const);

  it('0 generations of a population of 1 mutant: the pruned model (same loss and weights as slicing)', () => {
    const src = source();
    const keep = keepOf(src.model);
    const sliced = sliceExperts(registry, src, keep);
    const r = eepMerge(registry, src, windows, { keep, population: 2, generations: 0, sigma: 1e-9 });
    expect(r.startLoss).toBeCloseTo(windowsLoss(sliced.model, windows, 8), 6);
    expect(r.history[0]).toBeLessThanOrEqual(r.startLoss);
    expect(r.evaluations).toBe(2);
    // With a mutation of 1e-9 every weight is the sliced model's to float precision.
    const want = new Map(weights(sliced.model));
    for (const [n, v] of weights(r.model))
      v.forEach((x, i) => {
        expect(x).toBeCloseTo(want.get(n)![i]!, 5);
      });
  });

  it('never ends worse than the pruned model, the best loss never increases, deterministic for a seed', () => {
    const src = source();
    const keep = keepOf(src.model);
    const a = eepMerge(registry, src, windows, { keep, population: 4, generations: 3, sigma: 0.3, seed: 2 });
    const b = eepMerge(registry, src, windows, { keep, population: 4, generations: 3, sigma: 0.3, seed: 2 });
    expect(a.history).toHaveLength(4);
    for (let i = 1; i < a.history.length; i++) expect(a.history[i]!).toBeLessThanOrEqual(a.history[i - 1]!);
    expect(a.loss).toBeLessThanOrEqual(a.startLoss);
    expect(a.loss).toBe(a.history.at(-1));
    expect(b.history).toEqual(a.history);
    expect([...b.reductions]).toEqual([...a.reductions]);
    expect(a.evaluations).toBe(4 + 3 * 2);
  });

  it('its model is reduceExperts with the reported M and R, and the reported loss is that model’s', () => {
    const src = source();
    const keep = keepOf(src.model);
    const r = eepMerge(registry, src, windows, { keep, population: 4, generations: 2, sigma: 0.3, seed: 1 });
    for (const [path, red] of r.reductions) {
      expect(red.experts).toHaveLength(3);
      expect(red.router).toHaveLength(3);
      expect(red.keep).toEqual(keep.get(path));
    }
    const rebuilt = reduceExperts(registry, src, r.reductions);
    expect(windowsLoss(rebuilt.model, windows, 8)).toBeCloseTo(r.loss, 6);
    const want = new Map(weights(rebuilt.model));
    for (const [n, v] of weights(r.model))
      v.forEach((x, i) => {
        expect(x).toBeCloseTo(want.get(n)![i]!, 6);
      });
    expect(r.spec).toEqual(rebuilt.spec);
  });

  it('one-line errors: bad population, generations or sigma, an expert out of range, no windows', () => {
    const src = source();
    const keep = keepOf(src.model);
    expect(() => eepMerge(registry, src, windows, { keep, population: 1 })).toThrow(/population must be an integer of at least 2, got 1/);
    expect(() => eepMerge(registry, src, windows, { keep, generations: -1 })).toThrow(/generations must be a non-negative integer/);
    expect(() => eepMerge(registry, src, windows, { keep, sigma: 0 })).toThrow(/mutation size must be a positive number, got 0/);
    expect(() => eepMerge(registry, src, [], { keep })).toThrow(/no windows/);
    expect(() => eepMerge(registry, src, windows, { keep: new Map([['transformer.layers.0.ffn', [0, 9]]]) })).toThrow(
      /transformer\.layers\.0\.ffn: expert id 9 is out of range \[0, 6\)/,
    );
  });
});
