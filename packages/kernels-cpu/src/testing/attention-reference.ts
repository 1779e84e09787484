/**
 * Op-by-op references for the attention kernels' tests on every backend
 * (`@moelab/kernels-cpu/testing/attention-reference`): what core computes where a backend lacks the
 * fused kernels, from stock tfjs ops, and the RoPE tables they take. Side-effect free: it registers
 * no backend and loads no native addon (the caller's tfjs runs the ops on its current backend).
 *
 *   attention: out_i = sum_{j <= offset + i} softmax_j(scale q_i.k_j) v_j   on [B, H, T, d]
 *   RoPE:      rotate-half of the first `dims` channels (arXiv:2104.09864), x cos + rot(x) sin
 */
import type * as tfTypes from '@tensorflow/tfjs';

type Tf = typeof tfTypes;
type Tensor = tfTypes.Tensor;

/** Query row i sees keys j <= offset + i: 0 there, -1e9 elsewhere ([m, n]). */
export function causalMask(tf: Tf, m: number, n: number, offset = 0): Tensor {
  return tf.tensor2d(
    Float32Array.from({ length: m * n }, (_, x) => (x % n > offset + Math.floor(x / n) ? -1e9 : 0)),
    [m, n],
  );
}

/** Causal attention on [B,H,T,d] tensors; query row i sits at key position offset + i. */
export function attentionReference(tf: Tf, q: Tensor, k: Tensor, v: Tensor, scale: number, offset = 0): Tensor {
  const s = tf.add(tf.mul(tf.matMul(q as tfTypes.Tensor4D, k as tfTypes.Tensor4D, false, true), scale), causalMask(tf, q.shape[2]!, k.shape[2]!, offset));
  return tf.matMul(tf.softmax(s) as tfTypes.Tensor4D, v as tfTypes.Tensor4D);
}

/** Rotate-half RoPE of the first cos.shape[1] channels of x [B,H,T,dh] (inverse: the negative angle, its gradient). */
export function ropeReference(tf: Tf, x: Tensor, cos: Tensor, sin: Tensor, inverse = false): Tensor {
  const dh = x.shape[3]!;
  const dims = cos.shape[1]!;
  const half = dims / 2;
  const rot = tf.slice(x, [0, 0, 0, 0], [-1, -1, -1, dims]);
  const rotated = tf.concat([tf.neg(tf.slice(rot, [0, 0, 0, half], [-1, -1, -1, half])), tf.slice(rot, [0, 0, 0, 0], [-1, -1, -1, half])], 3);
  const out = tf.add(tf.mul(rot, cos), tf.mul(rotated, inverse ? tf.neg(sin) : sin));
  return dims === dh ? out : tf.concat([out, tf.slice(x, [0, 0, 0, dims], [-1, -1, -1, dh - dims])], 3);
}

/** RoPE cos / sin tables [T, dims] at base 10^4, equal on both halves, as {shape, data} test specs. */
export function ropeTables(T: number, dims: number): [{ shape: number[]; data: Float32Array }, { shape: number[]; data: Float32Array }] {
  const cos = new Float32Array(T * dims);
  const sin = new Float32Array(T * dims);
  for (let p = 0; p < T; p++) {
    for (let i = 0; i < dims / 2; i++) {
      const a = p / 10000 ** ((2 * i) / dims);
      cos[p * dims + i] = cos[p * dims + i + dims / 2] = Math.cos(a);
      sin[p * dims + i] = sin[p * dims + i + dims / 2] = Math.sin(a);
    }
  }
  return [
    { shape: [T, dims], data: cos },
    { shape: [T, dims], data: sin },
  ];
}
