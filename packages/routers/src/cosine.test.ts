import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import type { CosineRouter } from './cosine.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('cosine-topk router', () => {
  it('logits = exp(min(θ, log 100))·cos(Px, w_e): bounded by the scale, invariant to the input norm', () => {
    const r = makeRouter<CosineRouter>({ type: 'cosine-topk', projDim: 8 }, 6, 4);
    const x = tf.tensor2d(new Rng(1).normalArray(5 * 6), [5, 6]);
    const z = r.logits(x).arraySync() as number[][];
    // init_t = 0.5: scale 2
    for (const row of z) for (const v of row) expect(Math.abs(v)).toBeLessThanOrEqual(2 + 1e-5);
    const z3 = r.logits(tf.mul(x, 3) as tf.Tensor2D).arraySync() as number[][];
    z.forEach((row, t) => {
      row.forEach((v, e) => {
        expect(z3[t]![e]).toBeCloseTo(v, 5);
      });
    });
    // the learned scale is clamped at 100
    r.temperature.assign(tf.tensor1d([10]));
    for (const row of r.logits(x).arraySync() as number[][]) for (const v of row) expect(Math.abs(v)).toBeLessThanOrEqual(100 + 1e-3);
  });

  it('renormalised weights sum to 1; gradients reach the projection, expert embeddings and temperature', () => {
    const r = makeRouter<CosineRouter>({ type: 'cosine-topk', projDim: 8 }, 6, 4);
    const x = tf.tensor2d(new Rng(2).normalArray(6 * 6), [6, 6]);
    const { plan, weight } = r.route(x, forwardContext(new Rng(1), false));
    const sum = new Array(6).fill(0);
    const w = weight!.dataSync();
    for (let n = 0; n < plan.size; n++) sum[plan.tokenIndex[n]!] += w[n]!;
    for (const s of sum) expect(s).toBeCloseTo(1, 6);
    const c = tf.tensor1d(new Rng(3).normalArray(plan.size));
    const f = () => {
      const ctx = forwardContext(new Rng(1), true);
      const res = r.route(x, ctx);
      return tf.add(tf.sum(tf.mul(res.weight!, c)), ctx.aux[0]!.value) as tf.Scalar;
    };
    // expert embeddings start at std 0.01: rescale them so an FD step of 1e-3 is a small relative change
    r.sim.assign(tf.mul(r.sim, 100));
    for (const e of gradCheck(f, [r.proj, r.sim, r.temperature], 4, 1e-3)) expect(e).toBeLessThan(2e-2);
  });

  it('rejects k = 1 with renormalise and k > experts (JSON path); a tiny cosine-routed LM learns', () => {
    expect(() => makeRouter({ type: 'cosine-topk', k: 1 })).toThrow(/\$\.block\.ffn\.router\.renormalize: k = 1 with renormalize/);
    expect(() => makeRouter({ type: 'cosine-topk', k: 5 })).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds/);
    expect(lossRatio(trainLosses(tinyLM({ type: 'cosine-topk', projDim: 16 })))).toBeLessThan(0.85);
  });
});
