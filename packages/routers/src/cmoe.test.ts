import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeRouter } from '../test/helpers.js';
import type { CMoERouter } from './cmoe.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const silu = (v: number) => v / (1 + Math.exp(-v));

describe('cmoe-analytic', () => {
  it('scores |(x·û)·silu(x·ĝ)|, selects the top-k of the softmax, weight 1 + γ·s (1 at γ = 0)', () => {
    const r = makeRouter<CMoERouter>({ type: 'cmoe-analytic', k: 1 }, 8, 3);
    const x = tf.randomNormal([6, 8], 0, 1, 'float32', 2) as tf.Tensor2D;
    const ctx = forwardContext(new Rng(0), false);
    expect(Array.from(r.route(x, ctx).weight!.dataSync())).toEqual([1, 1, 1, 1, 1, 1]);
    r.gamma.assign(tf.tensor1d([0.5, 1, 2]));
    const res = r.route(x, ctx);
    const X = x.arraySync();
    const G = r.gateRep.arraySync() as number[][];
    const U = r.upRep.arraySync() as number[][];
    const w = res.weight!.dataSync();
    for (let t = 0; t < 6; t++) {
      const dot = (a: number[]) => a.reduce((s, v, i) => s + v * X[t]![i]!, 0);
      const score = G.map((g, e) => Math.abs(dot(U[e]!) * silu(dot(g))));
      const z = score.reduce((s, v) => s + Math.exp(v), 0);
      const best = score.indexOf(Math.max(...score));
      expect(res.plan.expertIndex[t]).toBe(best);
      expect(w[t]).toBeCloseTo(1 + [0.5, 1, 2][best]! * (Math.exp(score[best]!) / z), 5);
    }
    expect(r.namedParameters().map(([n]) => n)).toEqual(['gamma']);
  });
});
