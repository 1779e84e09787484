import { beforeAll, describe, expect, it } from 'vitest';
import { forwardContext, MoELayer, Rng, tf } from '../index.js';
import { MLPExperts } from '@moelab/experts';
import { SoftmaxTopKRouter } from '@moelab/routers';
import { capacityMask, DispatchPlan, expertCapacity } from './dispatch.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function layer(E: number, k: number, d: number, h: number, capacityFactor: number, seed = 3) {
  const rng = new Rng(seed);
  const router = new SoftmaxTopKRouter(d, E, { k, renormalize: true, noisy: false, balanceCoef: 0.01, zLossCoef: 0.001 }, rng);
  const experts = new MLPExperts(d, E, { hidden: h, activation: 'gelu', glu: false }, rng);
  const m = new MoELayer(router, experts, { capacityFactor });
  m.assignPaths('moe');
  return { m, router, experts };
}

/** The MoE layer computed the slow, obvious way: per token, per selected expert. */
function naive(
  x: Float32Array,
  T: number,
  d: number,
  E: number,
  k: number,
  W: Float32Array,
  w1: Float32Array,
  w2: Float32Array,
  h: number,
  keep?: (t: number, slot: number, e: number) => boolean,
) {
  const out = new Float32Array(T * d);
  const gelu = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));
  for (let t = 0; t < T; t++) {
    const logits = Array.from({ length: E }, (_, e) => {
      let s = 0;
      for (let i = 0; i < d; i++) s += x[t * d + i]! * W[e * d + i]!;
      return s;
    });
    const m = Math.max(...logits);
    const p = logits.map((l) => Math.exp(l - m));
    const z = p.reduce((a, b) => a + b, 0);
    const probs = p.map((v) => v / z);
    const order = probs
      .map((v, e) => [v, e] as const)
      .sort((a, b) => b[0] - a[0])
      .slice(0, k);
    const norm = order.reduce((s, [v]) => s + v, 0);
    order.forEach(([g, e], slot) => {
      if (keep && !keep(t, slot, e)) return;
      const hid = new Float64Array(h);
      for (let j = 0; j < h; j++) {
        let s = 0;
        for (let i = 0; i < d; i++) s += x[t * d + i]! * w1[(e * d + i) * h + j]!;
        hid[j] = gelu(s);
      }
      for (let i = 0; i < d; i++) {
        let s = 0;
        for (let j = 0; j < h; j++) s += hid[j]! * w2[(e * h + j) * d + i]!;
        out[t * d + i]! += (g / norm) * s;
      }
    });
  }
  return out;
}

function erf(x: number): number {
  // Abramowitz-Stegun 7.1.26 is too coarse; use a series/continued fraction good to ~1e-12.
  const t = 1 / (1 + 0.5 * Math.abs(x));
  const y =
    1 -
    t *
      Math.exp(
        -x * x -
          1.26551223 +
          t *
            (1.00002368 +
              t *
                (0.37409196 +
                  t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
      );
  return x >= 0 ? y : -y;
}

describe('top-k dispatch', () => {
  it('equals a naive per-token loop (dropless)', () => {
    const T = 13;
    const d = 6;
    const E = 5;
    const k = 2;
    const h = 7;
    const { m, router, experts } = layer(E, k, d, h, 0);
    const x = new Rng(9).normalArray(T * d);
    const got = tf.tidy(() => m.forward(tf.tensor2d(x, [T, d]), forwardContext(new Rng(0), false)).dataSync());
    const want = naive(
      x,
      T,
      d,
      E,
      k,
      router.weight.dataSync() as Float32Array,
      experts.w1.dataSync() as Float32Array,
      experts.w2.dataSync() as Float32Array,
      h,
    );
    for (let i = 0; i < want.length; i++) expect(got[i]).toBeCloseTo(want[i]!, 4);
  });

  it('with a capacity limit drops exactly the overflow, first choices before second choices', () => {
    const T = 16;
    const d = 4;
    const E = 4;
    const k = 2;
    const h = 5;
    const cf = 0.5;
    const { m, router, experts } = layer(E, k, d, h, cf, 11);
    const x = new Rng(5).normalArray(T * d);
    const ctx = forwardContext(new Rng(0), false);
    const got = tf.tidy(() => m.forward(tf.tensor2d(x, [T, d]), ctx).dataSync());
    const cap = expertCapacity(T * k, E, cf);
    expect(cap).toBe(4);
    // Replay the priority rule by hand: slot 0 of every token, then slot 1, each expert keeps `cap`.
    const W = router.weight.dataSync() as Float32Array;
    const choices: number[][] = [];
    for (let t = 0; t < T; t++) {
      const logits = Array.from({ length: E }, (_, e) => {
        let s = 0;
        for (let i = 0; i < d; i++) s += x[t * d + i]! * W[e * d + i]!;
        return s;
      });
      choices.push(
        logits
          .map((l, e) => [l, e] as const)
          .sort((a, b) => b[0] - a[0])
          .slice(0, k)
          .map(([, e]) => e),
      );
    }
    const used = new Array(E).fill(0);
    const kept = new Set<string>();
    for (let s = 0; s < k; s++)
      for (let t = 0; t < T; t++) {
        const e = choices[t]![s]!;
        if (used[e] < cap) {
          used[e]++;
          kept.add(`${t}/${s}`);
        }
      }
    const want = naive(x, T, d, E, k, W, experts.w1.dataSync() as Float32Array, experts.w2.dataSync() as Float32Array, h, (t, s) => kept.has(`${t}/${s}`));
    for (let i = 0; i < want.length; i++) expect(got[i]).toBeCloseTo(want[i]!, 4);
    const stats = ctx.routing[0]!;
    expect(stats.counts.every((c) => c <= cap)).toBe(true);
    expect(stats.dropRate).toBeCloseTo(1 - kept.size / (T * k), 6);
    expect(stats.dropRate).toBeGreaterThan(0);
  });

  it('dropless mode keeps every assignment', () => {
    const { m } = layer(4, 2, 4, 5, 0, 2);
    const ctx = forwardContext(new Rng(0), false);
    tf.tidy(() => m.forward(tf.tensor2d(new Rng(1).normalArray(40), [10, 4]), ctx));
    expect(ctx.routing[0]!.dropRate).toBe(0);
    expect(ctx.routing[0]!.counts.reduce((a, b) => a + b, 0)).toBe(20);
  });

  it('masked experts receive no tokens', () => {
    const { m } = layer(4, 2, 4, 5, 0, 2);
    const ctx = forwardContext(new Rng(0), false, { expertMask: new Map([['moe', new Set([0, 2])]]) });
    tf.tidy(() => m.forward(tf.tensor2d(new Rng(1).normalArray(80), [20, 4]), ctx));
    expect(ctx.routing[0]!.counts[0]).toBe(0);
    expect(ctx.routing[0]!.counts[2]).toBe(0);
  });
});

describe('DispatchPlan', () => {
  it('sorts stably by expert and builds the padded layout', () => {
    const p = new DispatchPlan(Int32Array.from([0, 1, 2, 0, 1]), Int32Array.from([2, 0, 2, 1, 2]), 3, 4);
    expect(Array.from(p.counts)).toEqual([1, 1, 3, 0]);
    expect(Array.from(p.order)).toEqual([1, 3, 0, 2, 4]);
    const pad = p.padded();
    expect(pad.capacity).toBe(3);
    expect(Array.from(pad.gatherIndex)).toEqual([1, 3, 3, 0, 3, 3, 0, 2, 1, 3, 3, 3]);
    expect(() => new DispatchPlan(Int32Array.from([0]), Int32Array.from([4]), 1, 4)).toThrow(/expert index 4 out of range/);
  });

  it('capacityMask keeps the first `capacity` per expert', () => {
    const p = new DispatchPlan(Int32Array.from([0, 1, 2, 3]), Int32Array.from([1, 1, 1, 0]), 4, 2);
    expect(Array.from(capacityMask(p, 2))).toEqual([1, 1, 0, 1]);
  });
});
