import { buildModel, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, layerToyLosses, lossRatio, makeFFN, makeRouter, probe, registry, tinyLM } from '../test/helpers.js';
import type { SoftMoERouter } from './soft-moe.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const moe = (router: Record<string, unknown>) => ({ type: 'moe', experts: 4, router, expert: { type: 'mlp', hidden: 8 } });

describe('soft-moe router', () => {
  it('dispatch columns sum to 1 over the tokens of a sequence; combine rows sum to 1 over the E·S slots', () => {
    const r = makeRouter<SoftMoERouter>({ type: 'soft-moe', slotsPerExpert: 2 }, 8, 4);
    const x = tf.tensor2d(new Rng(1).normalArray(2 * 5 * 8), [10, 8]);
    const { dispatch, combine } = r.weights(x, 2, 5);
    expect(dispatch.shape).toEqual([2, 5, 8]);
    for (const v of tf.sum(dispatch, 1).dataSync()) expect(v).toBeCloseTo(1, 5);
    for (const v of tf.sum(combine, 2).dataSync()) expect(v).toBeCloseTo(1, 5);
    // slots default to round(cf · contextLength / E)
    expect(makeRouter<SoftMoERouter>({ type: 'soft-moe' }, 8, 4, { contextLength: 12 }).options.slotsPerExpert).toBe(3);
  });

  it('permuting the tokens of a sequence permutes the outputs identically', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'soft-moe', slotsPerExpert: 1 }), 8);
    const T = 6;
    const xs = new Rng(2).normalArray(T * 8);
    const perm = [3, 0, 5, 1, 4, 2];
    const xp = new Float32Array(T * 8);
    perm.forEach((src, i) => {
      xp.set(xs.subarray(src * 8, src * 8 + 8), i * 8);
    });
    const y = layer.forward(tf.tensor3d(xs, [1, T, 8]), forwardContext(new Rng(1), false)).arraySync() as number[][][];
    const yp = layer.forward(tf.tensor3d(xp, [1, T, 8]), forwardContext(new Rng(1), false)).arraySync() as number[][][];
    perm.forEach((src, i) => {
      for (let j = 0; j < 8; j++) expect(yp[0]![i]![j]).toBeCloseTo(y[0]![src]![j]!, 5);
    });
  });

  it('sequences do not mix: changing sequence 1 leaves the outputs of sequence 0 unchanged', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'soft-moe', slotsPerExpert: 1 }), 8);
    const a = new Rng(3).normalArray(2 * 4 * 8);
    const b = Float32Array.from(a);
    for (let i = 32; i < 64; i++) b[i] = -b[i]! + 0.5;
    const ya = layer.forward(tf.tensor3d(a, [2, 4, 8]), forwardContext(new Rng(1), false)).dataSync();
    const yb = layer.forward(tf.tensor3d(b, [2, 4, 8]), forwardContext(new Rng(1), false)).dataSync();
    for (let i = 0; i < 32; i++) expect(yb[i]).toBeCloseTo(ya[i]!, 6);
    expect(Math.abs(yb[40]! - ya[40]!)).toBeGreaterThan(1e-4);
  });

  it('a causal LM refuses it (not causal, batch-dependent); route() points to the mix path', () => {
    expect(() => buildModel(tinyLM({ type: 'soft-moe' }), registry(), 0)).toThrow(/\$\.block\.ffn\.router: this router is batch-dependent and not causal/);
    expect(() => buildModel(tinyLM({ type: 'soft-moe' }, { allowBatchDependent: true }), registry(), 0)).toThrow(/not causal/);
    expect(() => makeRouter<SoftMoERouter>({ type: 'soft-moe' }).route()).toThrow(/mix path/);
    expect(() => makeRouter({ type: 'soft-moe', slotsPerExpert: 0 })).toThrow(/\$\.block\.ffn\.router\.slotsPerExpert/);
  });

  it('gradients of the layer w.r.t. Φ, the scale and the experts match finite differences', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'soft-moe', slotsPerExpert: 2 }), 8);
    const x = tf.tensor3d(new Rng(4).normalArray(2 * 4 * 8), [2, 4, 8]);
    const vars = layer.namedParameters().map(([, v]) => v);
    expect(layer.namedParameters().map(([n]) => n)).toEqual(expect.arrayContaining(['router.phi', 'router.scale']));
    for (const e of gradCheck(() => probe(layer.forward(x, forwardContext(new Rng(1), true))), vars, 6, 1e-2)) expect(e).toBeLessThan(1e-2);
  });

  it('routing statistics: every expert processes B·S slots; per-token expert distribution has entropy ≤ 1 (normalised)', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'soft-moe', slotsPerExpert: 2 }), 8);
    const ctx = forwardContext(new Rng(1), false);
    layer.forward(tf.tensor3d(new Rng(5).normalArray(3 * 4 * 8), [3, 4, 8]), ctx);
    const s = ctx.routing[0]!;
    expect(s.counts).toEqual([6, 6, 6, 6]);
    expect(s.entropy! / Math.log(4)).toBeLessThanOrEqual(1 + 1e-6);
    expect(s.dropRate).toBe(0);
  });

  it('a soft-moe layer fits a toy regression (loss falls)', () => {
    // every output mixes all slots of its sequence, so it needs more steps than a token-choice layer
    expect(lossRatio(layerToyLosses(moe({ type: 'soft-moe', slotsPerExpert: 2 }), 40))).toBeLessThan(0.8);
  });
});
