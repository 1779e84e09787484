import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeRouter } from '../test/helpers.js';
import type { MoEficationRouter } from './moefication.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('moefication-mlp', () => {
  it('selects the top-k of W_b tanh(W_a x/‖x‖) with weight 1; W_b starts as the identity', () => {
    const r = makeRouter<MoEficationRouter>({ type: 'moefication-mlp', k: 2 }, 8, 4);
    expect(Array.from(r.wb.dataSync())).toEqual([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
    const x = tf.randomNormal([5, 8], 0, 1, 'float32', 1) as tf.Tensor2D;
    const res = r.route(x, forwardContext(new Rng(0), false));
    expect(res.weight).toBeNull();
    const X = x.arraySync();
    const Wa = r.wa.arraySync() as number[][];
    for (let t = 0; t < 5; t++) {
      const n = Math.hypot(...X[t]!);
      const s = Wa.map((w) => Math.tanh(w.reduce((acc, v, a) => acc + (v * X[t]![a]!) / n, 0)));
      const top = s
        .map((v, e) => [v, e] as const)
        .sort((a, b) => b[0] - a[0])
        .slice(0, 2)
        .map(([, e]) => e)
        .sort();
      const got = [res.plan.expertIndex[t]!, res.plan.expertIndex[5 + t]!].sort();
      expect(got).toEqual(top);
    }
    expect(() => makeRouter({ type: 'moefication-mlp', k: 5 }, 8, 4)).toThrow(/k = 5 exceeds/);
  });
});
