import { balanceOf, buildModel, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { layerToyLosses, lossRatio, makeFFN, makeRouter, registry, tinyLM } from '../test/helpers.js';
import { type SinkhornRouter, sinkhorn } from './sinkhorn.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('sinkhorn router', () => {
  it('sinkhorn(exp z) is near doubly stochastic: rows sum to 1/T, columns to 1/E', () => {
    const T = 12;
    const E = 4;
    const z = new Rng(1).normalArray(T * E, 2);
    const A = sinkhorn(z, T, E, 1e-6);
    for (let t = 0; t < T; t++) expect(A.slice(t * E, t * E + E).reduce((a, b) => a + b, 0)).toBeCloseTo(1 / T, 4);
    for (let e = 0; e < E; e++) expect(Array.from({ length: T }, (_, t) => A[t * E + e]!).reduce((a, b) => a + b, 0)).toBeCloseTo(1 / E, 4);
  });

  it('training selection is balanced on a skewed router, eval is the plain top-k; weights are σ(z) for k = 1', () => {
    const r = makeRouter<SinkhornRouter>({ type: 'sinkhorn' }, 6, 4);
    const v = new Rng(2).normalArray(64 * 6);
    for (let t = 0; t < 64; t++) v[t * 6] = 1;
    const x = tf.tensor2d(v, [64, 6]);
    // skew: feature 0 (constant) strongly favours expert 1
    const w2 = r.weight.arraySync() as number[][];
    w2[1]![0] = 3;
    r.weight.assign(tf.tensor2d(w2));
    const ev = r.route(x, forwardContext(new Rng(1), false));
    const tr = r.route(x, forwardContext(new Rng(1), true));
    expect(balanceOf(tr.plan.counts).maxVio).toBeLessThan(balanceOf(ev.plan.counts).maxVio);
    const z = tf.matMul(x, r.weight, false, true).arraySync() as number[][];
    const ww = ev.weight!.dataSync();
    for (let n = 0; n < ev.plan.size; n++) {
      const t = ev.plan.tokenIndex[n]!;
      const e = ev.plan.expertIndex[n]!;
      expect(e).toBe(z[t]!.indexOf(Math.max(...z[t]!)));
      expect(ww[n]).toBeCloseTo(1 / (1 + Math.exp(-z[t]![e]!)), 6);
    }
  });

  it('a causal LM refuses it; a non-causal moe layer with it fits a toy regression', () => {
    expect(() => buildModel(tinyLM({ type: 'sinkhorn' }), registry(), 0)).toThrow(/\$\.block\.ffn\.router: this router is batch-dependent and not causal/);
    expect(() => makeRouter({ type: 'sinkhorn', k: 5 })).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds/);
    expect(makeFFN<MoELayer>({ type: 'moe', experts: 4, router: 'sinkhorn', expert: { type: 'mlp', hidden: 8 } }).router.flags.causalSafe).toBe(false);
    expect(lossRatio(layerToyLosses({ type: 'moe', experts: 4, router: { type: 'sinkhorn', k: 2 }, expert: { type: 'mlp', hidden: 8 } }))).toBeLessThan(0.85);
  });
});
