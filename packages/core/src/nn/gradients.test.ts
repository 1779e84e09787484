import { beforeAll, describe, expect, it } from 'vitest';
import { MLPExperts } from '@moelab/experts';
import { SoftmaxTopKRouter } from '@moelab/routers';
import { directionalGradCheck } from '../../test/helpers.js';
import { DenseFFN, forwardContext, LayerNorm, MoELayer, MultiHeadAttention, Rng, tf } from '../index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

// Finite differences in float32: a central difference with eps 1e-2 on smooth functions agrees with
// autodiff to ~1e-3 relative; a wrong gradient is off by O(1).
const TOL = 2e-2;

describe('finite-difference gradient checks', () => {
  it('causal multi-head attention with RoPE (params and input)', () => {
    const rng = new Rng(1);
    const att = new MultiHeadAttention(8, { heads: 2 }, rng);
    const x = tf.variable(tf.tensor3d(rng.normalArray(2 * 5 * 8), [2, 5, 8]));
    const R = tf.tensor3d(rng.normalArray(2 * 5 * 8), [2, 5, 8]);
    const f = () => tf.sum(tf.mul(att.forward(x, forwardContext(rng, true)), R)) as tf.Scalar;
    const errs = directionalGradCheck(f, [x, ...att.trainableVariables()], new Rng(2));
    for (const e of errs) expect(e).toBeLessThan(TOL);
  });

  it('dense FFN (GELU and SwiGLU) and LayerNorm', () => {
    const rng = new Rng(3);
    for (const [act, glu] of [
      ['gelu', false],
      ['silu', true],
    ] as const) {
      const ffn = new DenseFFN(6, 10, act, glu, rng);
      const ln = new LayerNorm(6);
      const x = tf.variable(tf.tensor2d(rng.normalArray(4 * 6), [4, 6]));
      const R = tf.tensor2d(rng.normalArray(4 * 6), [4, 6]);
      const f = () => tf.sum(tf.mul(ffn.forward(ln.forward(x), forwardContext(rng, true)), R)) as tf.Scalar;
      const errs = directionalGradCheck(f, [x, ...ffn.trainableVariables(), ...ln.trainableVariables()], new Rng(4));
      for (const e of errs) expect(e).toBeLessThan(TOL);
    }
  });

  it('MoE layer: router, experts, input, and the aux losses (routing decisions fixed)', () => {
    const rng = new Rng(5);
    const d = 6;
    const E = 4;
    const router = new SoftmaxTopKRouter(d, E, { k: 2, renormalize: true, noisy: false, balanceCoef: 0.1, zLossCoef: 0.01 }, rng);
    const experts = new MLPExperts(d, E, { hidden: 8, activation: 'gelu', glu: false }, rng);
    const moe = new MoELayer(router, experts, { capacityFactor: 0 });
    // Scale the input down so that a tiny step cannot change which experts are selected.
    const x = tf.variable(tf.mul(tf.tensor2d(rng.normalArray(7 * d), [7, d]), 1));
    const R = tf.tensor2d(rng.normalArray(7 * d), [7, d]);
    const f = () => {
      const ctx = forwardContext(rng, true);
      const out = moe.forward(x, ctx);
      let loss = tf.sum(tf.mul(out, R));
      for (const a of ctx.aux) loss = tf.add(loss, tf.mul(a.value, a.coef));
      return loss as tf.Scalar;
    };
    const errs = directionalGradCheck(f, [x, ...moe.trainableVariables()], new Rng(6), 1e-3);
    for (const e of errs) expect(e).toBeLessThan(5e-2);
  });
});
