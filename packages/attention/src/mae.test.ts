import { directionalGradCheck, MultiHeadAttention, Rng, tf } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { attentionBuilder, inferenceContext as ctx, input, maxDiff, useCpuBackend } from '../test/helpers.js';
import type { MixtureOfHeadDroppedExperts } from './mae.js';

useCpuBackend();

const build = attentionBuilder<MixtureOfHeadDroppedExperts>('mae');

/** A dense MHA with the MAE's q/k/v/o weights. */
function dense(m: MixtureOfHeadDroppedExperts): MultiHeadAttention {
  const a = new MultiHeadAttention(m.dModel, { heads: m.options.heads, headDim: m.options.headDim, ropeDims: m.options.ropeDims }, new Rng(1));
  a.q.weight.assign(m.q.weight);
  a.k.weight.assign(m.k.weight);
  a.v.weight.assign(m.v.weight);
  a.o.weight.assign(m.o.weight);
  return a;
}

describe('mae', () => {
  it('§5.3: a zero gate (the default init) gives exactly the dense multi-head attention; names are MHA’s plus gate.weight', () => {
    const m = build({ heads: 4 });
    m.assignPaths();
    expect(m.namedParameters().map(([n, v]) => `${n} ${v.shape}`)).toEqual([
      'q_proj.weight 16,16',
      'k_proj.weight 16,16',
      'v_proj.weight 16,16',
      'o_proj.weight 16,16',
      'gate.weight 4,16',
    ]);
    const x = input(2, 6, 16);
    expect(maxDiff(m.forward(x, ctx()), dense(m).forward(x, ctx()))).toBeLessThan(1e-5);
    for (const granularity of ['token', 'sequence']) {
      const s = build({ heads: 4, granularity });
      expect(maxDiff(s.forward(x, ctx()), dense(s).forward(x, ctx()))).toBeLessThan(1e-5);
    }
  });

  it('§5.1: MAE = Σ_i g_i f_i with f_i = h/(h−1) Σ_{j≠i} head_j W_o^(i) (experts built explicitly)', () => {
    const H = 4;
    const dh = 4;
    const m = build({ heads: H, gateStd: 1 });
    const x = input(1, 5, 16);
    const g = m.weights(x); // [5, H]
    // head contributions H_j = head_j W_o^(j): zero every other head's slice of W_o
    const a = dense(m);
    const contrib = Array.from({ length: H }, (_, j) => {
      const mask = tf.tensor2d(
        Float32Array.from({ length: 16 * H * dh }, (_, i) => (Math.floor((i % (H * dh)) / dh) === j ? 1 : 0)),
        [16, H * dh],
      );
      a.o.weight.assign(tf.mul(m.o.weight, mask));
      return a.forward(x, ctx());
    });
    const experts = Array.from({ length: H }, (_, i) => tf.mul(tf.addN(contrib.filter((_, j) => j !== i)), H / (H - 1)));
    const ref = tf.addN(experts.map((f, i) => tf.mul(f, tf.reshape(tf.slice(g, [0, i], [-1, 1]), [1, 5, 1]))));
    expect(maxDiff(m.forward(x, ctx()), ref)).toBeLessThan(1e-5);
    // and with a trained (non-uniform) gate it is not the dense attention
    expect(maxDiff(m.forward(x, ctx()), dense(m).forward(x, ctx()))).toBeGreaterThan(1e-3);
  });

  it('causality for both gate granularities; expert weights sum to 1', () => {
    for (const granularity of ['token', 'sequence']) {
      const m = build({ heads: 2, granularity, gateStd: 1 });
      const x = input(1, 8, 16);
      for (const row of m.weights(x).arraySync()) expect(row.reduce((s, p) => s + p, 0)).toBeCloseTo(1, 5);
      const a = m.forward(x, ctx());
      const bumped = tf.concat([tf.slice(x, [0, 0, 0], [1, 3, 16]), tf.add(tf.slice(x, [0, 3, 0], [1, 5, 16]), 2)], 1);
      const b = m.forward(bumped, ctx());
      expect(maxDiff(tf.slice(a, [0, 0, 0], [1, 3, 16]), tf.slice(b, [0, 0, 0], [1, 3, 16]))).toBeLessThan(1e-6);
    }
  });

  it('finite-difference gradients (gate included)', () => {
    const m = build({ heads: 2, gateStd: 0.5, granularity: 'sequence' }, 8);
    const x = tf.variable(input(2, 5, 8));
    const R = input(2, 5, 8, 9);
    const f = () => tf.sum(tf.mul(m.forward(x, ctx()), R)) as tf.Scalar;
    for (const e of directionalGradCheck(f, [x, ...m.trainableVariables()], new Rng(2))) expect(e).toBeLessThan(2e-2);
  });

  it('bad input and counters', () => {
    expect(() => build({ heads: 3 })).toThrow('$.block.attention.heads: dModel 16 is not divisible by heads 3; set headDim');
    expect(() => build({ heads: 1 })).toThrow('$.block.attention.heads');
    const m = build({ heads: 4 });
    expect(m.parameterCount()).toBe(4 * 16 * 16 + 4 * 16);
    expect(m.flopsPerToken(32)).toBe(8 * 16 * 16 + 2 * 32 * 16 + 2 * 4 * 16);
  });
});
