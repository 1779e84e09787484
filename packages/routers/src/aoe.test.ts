import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, lossRatio, makeFFN, probe, tinyLMWithFFN, trainLosses } from '../test/helpers.js';
import type { AutonomyOfExperts } from './aoe.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const node = (o: Record<string, unknown> = {}) => ({ type: 'aoe', experts: 4, k: 2, rank: 3, hidden: 5, activation: 'relu', ...o });

describe('autonomy-of-experts', () => {
  it('with k = E it is the dense mixture Σ_e softmax(||x W_down^e||)_e · y_e', () => {
    const m = makeFFN<AutonomyOfExperts>(node({ k: 4 }), 6);
    const x = tf.tensor2d(new Rng(1).normalArray(5 * 6), [5, 6]);
    const out = m.forward(x, forwardContext(new Rng(1), false)).arraySync() as number[][];
    const a = tf.reshape(tf.matMul(x, m.wDown), [5, 4, 3]);
    const p = tf.softmax(tf.norm(a, 'euclidean', 2)) as tf.Tensor2D;
    let ref = tf.zeros([5, 6]);
    for (let e = 0; e < 4; e++) {
      const ae = tf.reshape(tf.slice(a, [0, e, 0], [5, 1, 3]), [5, 3]);
      const up = tf.reshape(tf.slice(m.wUp, [e, 0, 0], [1, 3, 5]), [3, 5]);
      const wp = tf.reshape(tf.slice(m.wP, [e, 0, 0], [1, 6, 5]), [6, 5]);
      const wo = tf.reshape(tf.slice(m.wO, [e, 0, 0], [1, 5, 6]), [5, 6]);
      const y = tf.matMul(tf.mul(tf.relu(tf.matMul(ae, up)), tf.matMul(x, wp)), wo);
      ref = tf.add(ref, tf.mul(y, tf.slice(p, [0, e], [5, 1])));
    }
    const r = ref.arraySync() as number[][];
    out.forEach((row, t) => {
      row.forEach((v, j) => {
        expect(v).toBeCloseTo(r[t]![j]!, 5);
      });
    });
  });

  it('scaling W_down^e by c > 1 makes expert e selected more often; routing stats are reported', () => {
    const m = makeFFN<AutonomyOfExperts>(node({ k: 1 }), 6);
    const x = tf.tensor3d(new Rng(2).normalArray(64 * 6), [1, 64, 6]);
    const count = () => {
      const ctx = forwardContext(new Rng(1), false);
      m.forward(x, ctx);
      return ctx.routing[0]!.counts[2]!;
    };
    const before = count();
    const w = m.wDown.arraySync() as number[][];
    for (const row of w) for (let j = 6; j < 9; j++) row[j]! *= 3; // expert 2's columns
    m.wDown.assign(tf.tensor2d(w));
    expect(count()).toBeGreaterThan(before);
  });

  it('gradients of the output and balance loss match finite differences', () => {
    const m = makeFFN<AutonomyOfExperts>(node(), 6);
    const x = tf.tensor2d(new Rng(3).normalArray(4 * 6), [4, 6]);
    const f = () => {
      const ctx = forwardContext(new Rng(1), true);
      return tf.add(probe(m.forward(x, ctx)), ctx.aux[0]!.value) as tf.Scalar;
    };
    for (const e of gradCheck(
      f,
      m.namedParameters().map(([, v]) => v),
      4,
      1e-3,
    ))
      expect(e).toBeLessThan(2e-2);
  });

  it('rejects k > experts with the JSON path; a tiny AoE LM learns', () => {
    expect(() => makeFFN(node({ k: 5 }))).toThrow(/\$\.block\.ffn\.k: k = 5 exceeds the number of experts \(4\)/);
    expect(lossRatio(trainLosses(tinyLMWithFFN(node({ hidden: 16 }))))).toBeLessThan(0.85);
  });
});
