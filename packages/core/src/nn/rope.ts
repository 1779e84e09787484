/**
 * Rotary position embedding (Su et al., 2021), "rotate half" layout: channel i is paired with channel
 * i + dims/2 within the first `dims` channels of each head; the remaining channels pass through
 * (SwitchHead rotates half of each head's channels, for example).
 */
import { MoelabError } from '../errors.js';
import { ROPE_KERNEL, type RopeAttrs, type RopeInputs } from '../kernels/contract.js';
import { hasKernel } from '../ops/kernel.js';
import { tf } from '../tf.js';

const cache = new Map<string, { cos: tf.Tensor2D; sin: tf.Tensor2D }>();

/** Throws unless `dims` (the rotated channels) is even and at most the head size. */
export function checkRopeDims(dims: number, headDim: number): void {
  if (dims % 2 !== 0 || dims > headDim) throw new MoelabError(`RoPE dims must be even and at most the head size (${dims} vs ${headDim})`, 'ropeDims');
}

/** The cos / sin tables [T, dims] of positions offset..offset+T-1 (cached, kept). */
export function ropeTables(T: number, dims: number, base = 10000, offset = 0): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  const key = `${T}/${dims}/${base}/${offset}`;
  let t = cache.get(key);
  if (!t) {
    const half = dims / 2;
    const cos = new Float32Array(T * dims);
    const sin = new Float32Array(T * dims);
    for (let p = 0; p < T; p++) {
      for (let i = 0; i < half; i++) {
        const ang = (p + offset) / base ** ((2 * i) / dims);
        cos[p * dims + i] = cos[p * dims + i + half] = Math.cos(ang);
        sin[p * dims + i] = sin[p * dims + i + half] = Math.sin(ang);
      }
    }
    t = { cos: tf.keep(tf.tensor2d(cos, [T, dims])), sin: tf.keep(tf.tensor2d(sin, [T, dims])) };
    cache.set(key, t);
  }
  return t;
}

/** x: [B, H, T, dh]. Rotates the first `dims` channels (even, <= dh) by position (+ offset). */
export function applyRope(x: tf.Tensor, dims: number, base = 10000, offset = 0): tf.Tensor {
  const dh = x.shape[3]!;
  const T = x.shape[2]!;
  if (dims <= 0) return x;
  checkRopeDims(dims, dh);
  const { cos, sin } = ropeTables(T, dims, base, offset);
  // The backend's fused RoPE when it has one (ROPE_KERNEL in the kernel contract).
  if (x.rank === 4 && hasKernel(ROPE_KERNEL)) {
    return tf
      .engine()
      .runKernel(
        ROPE_KERNEL,
        { x, cos, sin } satisfies RopeInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
        { inverse: false } satisfies RopeAttrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor;
  }
  const rot = dims === dh ? x : tf.slice(x, [0, 0, 0, 0], [-1, -1, -1, dims]);
  const half = dims / 2;
  const x1 = tf.slice(rot, [0, 0, 0, 0], [-1, -1, -1, half]);
  const x2 = tf.slice(rot, [0, 0, 0, half], [-1, -1, -1, half]);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  const out = tf.add(tf.mul(rot, cos), tf.mul(rotated, sin));
  if (dims === dh) return out;
  return tf.concat([out, tf.slice(x, [0, 0, 0, dims], [-1, -1, -1, dh - dims])], 3);
}
