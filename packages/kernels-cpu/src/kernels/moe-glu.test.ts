import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { type MoeActivation, moeGLU } from '../index.js';
import { randArray, rng, status } from '../testing/helpers.js';
import { act, expectSame, expertSpecs, mlpCases, oneHot } from '../testing/moe-reference.js';

afterAll(async () => {
  await tf.setBackend('cpu');
});

/** The definition, one assignment at a time, in plain tfjs ops (run on the stock cpu backend). */
function refGLU(x: tf.Tensor, w1: tf.Tensor, w3: tf.Tensor, w2: tf.Tensor, tok: tf.Tensor, exp: tf.Tensor, wt: tf.Tensor, a: MoeActivation): tf.Tensor {
  const [T, d] = x.shape;
  const N = tok.size;
  // Zero, but still a function of every input, so tf.grads yields (zero) gradients for all of them.
  if (N === 0) return tf.add(tf.mul(x, 0), tf.mul(tf.addN([tf.sum(w1), tf.sum(w3), tf.sum(w2), tf.sum(wt)]), 0));
  const oh = oneHot(tok, T);
  const xs = tf.reshape(tf.matMul(oh, x), [N, 1, d]);
  const u = tf.mul(act(tf.matMul(xs, tf.gather(w1, exp)), a), tf.matMul(xs, tf.gather(w3, exp)));
  const y = tf.reshape(tf.matMul(u, tf.gather(w2, exp)), [N, d]);
  return tf.matMul(oh, tf.mul(y, tf.reshape(wt, [N, 1])), true, false);
}

describe.skipIf(!status.available)(`fused GLU experts equal the plain-tfjs reference (${status.reason})`, () => {
  for (const c of mlpCases) {
    for (const a of ['silu', 'gelu', 'relu', 'relu2', 'identity'] as MoeActivation[]) {
      it(`MoelabMoeGLU ${a}: ${c.name} (forward and gradients of x, w1, w3, w2, weight)`, async () => {
        const specs = expertSpecs(c, 300 + c.T + a.length, true);
        const proj = randArray(rng(11), c.T * c.d);
        const lossOf = (y: tf.Tensor) => tf.sum(tf.mul(y, tf.tensor(proj, y.shape)));
        const fast = (x: tf.Tensor, w1: tf.Tensor, w3: tf.Tensor, w2: tf.Tensor, tok: tf.Tensor, exp: tf.Tensor, wt: tf.Tensor) =>
          moeGLU(x as tf.Tensor2D, w1 as tf.Tensor3D, w3 as tf.Tensor3D, w2 as tf.Tensor3D, tok as tf.Tensor1D, exp as tf.Tensor1D, wt as tf.Tensor1D, a);
        await expectSame(specs, fast, (x, w1, w3, w2, tok, exp, wt) => refGLU(x, w1, w3, w2, tok, exp, wt, a), 2e-5);
        await expectSame(
          specs,
          (x, w1, w3, w2, tok, exp, wt) =>
            tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor, s: tf.Tensor, u: tf.Tensor) => lossOf(fast(p, q, r, s, tok, exp, u)))([x, w1, w3, w2, wt]),
          (x, w1, w3, w2, tok, exp, wt) =>
            tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor, s: tf.Tensor, u: tf.Tensor) => lossOf(refGLU(p, q, r, s, tok, exp, u, a)))([x, w1, w3, w2, wt]),
          5e-5,
        );
      });
    }
  }

  it('rejects out-of-range indices and wrong shapes with a clear error', async () => {
    await tf.setBackend('moelab-cpu');
    tf.tidy(() => {
      const x = tf.zeros([3, 4]) as tf.Tensor2D;
      const w1 = tf.zeros([2, 4, 5]) as tf.Tensor3D;
      const w2 = tf.zeros([2, 5, 4]) as tf.Tensor3D;
      const ok = tf.tensor1d([0, 1], 'int32');
      const wt = tf.ones([2]) as tf.Tensor1D;
      expect(() => moeGLU(x, w1, w1, w2, tf.tensor1d([0, 3], 'int32'), ok, wt, 'silu')).toThrow(/tokenIndex\[1\] = 3 is outside \[0, 3\)/);
      expect(() => moeGLU(x, w1, w1, w2, ok, tf.tensor1d([2, 0], 'int32'), wt, 'silu')).toThrow(/expertIndex\[0\] = 2 is outside \[0, 2\)/);
      expect(() => moeGLU(x, w1, tf.zeros([2, 4, 6]) as tf.Tensor3D, w2, ok, ok, wt, 'silu')).toThrow(/'w3' has shape \[2,4,6\], expected \[2,4,5\]/);
      expect(() => moeGLU(x, w1, w1, w2, ok, ok, wt, 'tanh' as MoeActivation)).toThrow(/MoelabMoeGLU: unknown activation 'tanh'/);
    });
  });
});
