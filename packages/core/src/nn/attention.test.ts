import { beforeAll, describe, expect, it } from 'vitest';
import { forwardContext, MultiHeadAttention, Rng, ropeTables, tf } from '../index.js';

beforeAll(async () => {
  // On the moelab-cpu test pass this runs on the native backend, where MultiHeadAttention takes the
  // fused path (RoPE + attention kernels on the [B, T, H, d] layout); on cpu, the op-by-op one.
  await tf.setBackend('cpu');
});

/** Causal attention with rotate-half RoPE from plain tfjs ops, with the module's own projections. */
function reference(att: MultiHeadAttention, x: tf.Tensor3D): tf.Tensor {
  const [B, T] = x.shape;
  const H = att.heads;
  const dh = att.headDim;
  const heads = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [B, T, H, dh]), [0, 2, 1, 3]);
  const rope = (t: tf.Tensor) => {
    const dims = att.ropeDims;
    if (dims === 0) return t;
    const { cos, sin } = ropeTables(T, dims, att.ropeBase);
    const half = dims / 2;
    const rot = tf.slice(t, [0, 0, 0, 0], [-1, -1, -1, dims]);
    const rotated = tf.concat([tf.neg(tf.slice(rot, [0, 0, 0, half], [-1, -1, -1, half])), tf.slice(rot, [0, 0, 0, 0], [-1, -1, -1, half])], 3);
    const out = tf.add(tf.mul(rot, cos), tf.mul(rotated, sin));
    return dims === dh ? out : tf.concat([out, tf.slice(t, [0, 0, 0, dims], [-1, -1, -1, dh - dims])], 3);
  };
  const q = rope(heads(att.q.forward(x)));
  const k = rope(heads(att.k.forward(x)));
  const v = heads(att.v.forward(x));
  const mask = tf.tensor2d(
    Float32Array.from({ length: T * T }, (_, i) => (i % T > Math.floor(i / T) ? -1e9 : 0)),
    [T, T],
  );
  const p = tf.softmax(tf.add(tf.mul(tf.matMul(q as tf.Tensor4D, k as tf.Tensor4D, false, true), 1 / Math.sqrt(dh)), mask));
  const o = tf.matMul(p as tf.Tensor4D, v as tf.Tensor4D);
  return att.o.forward(tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [B, T, H * dh]));
}

describe('MultiHeadAttention', () => {
  it('equals causal softmax attention with RoPE written out op by op (full and partial RoPE, T across 64-query blocks)', () => {
    for (const [d, heads, ropeDims, T] of [
      [16, 2, undefined, 70],
      [24, 3, 4, 9],
      [8, 2, 0, 1],
    ] as [number, number, number | undefined, number][]) {
      const rng = new Rng(7);
      const att = new MultiHeadAttention(d, { heads, ropeDims }, rng);
      const x = tf.tensor3d(rng.normalArray(2 * T * d), [2, T, d]);
      const got = att.forward(x, forwardContext(rng, false)).dataSync();
      const want = reference(att, x).dataSync();
      expect(got.length).toBe(want.length);
      let worst = 0;
      for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (1 + Math.abs(want[i]!)));
      expect(worst).toBeLessThan(1e-5);
    }
  });
});
