/**
 * Rotary position embedding (Su et al., 2021, arXiv 2104.09864) of the first `dims` channels of each
 * head; the remaining channels pass through (SwitchHead rotates half of each head's channels, for example).
 * Channel pairs (a, b) at position p turn by the angle θ_i = p / base^(2i/dims), i < dims/2:
 *
 *   a' = a cos θ_i − b sin θ_i,   b' = b cos θ_i + a sin θ_i
 *
 * Two layouts say which channels form pair i:
 * - `half` (rotate_half: Hugging Face transformers' Llama / Mixtral / Qwen / OLMoE code): (i, i + dims/2);
 * - `interleaved` (GPT-J, Meta's original LLaMA code): (2i, 2i + 1).
 * Interleaved is rotate_half on the channels reordered evens-then-odds, then put back: one gather on
 * each side, so both layouts share the backend's fused rotate-half kernel.
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

/** Which channels of a head form a RoPE pair: (i, i + dims/2) or (2i, 2i + 1). */
export type RopeLayout = 'half' | 'interleaved';

const orders = new Map<string, { toHalf: tf.Tensor1D; back: tf.Tensor1D }>();

/**
 * The channel orders that turn the interleaved layout into rotate-half and back, for heads of `dh`
 * channels with the first `dims` rotated: toHalf = [0, 2, .., dims-2, 1, 3, .., dims-1, dims, .., dh-1].
 */
export function interleavedOrder(dh: number, dims: number): { toHalf: tf.Tensor1D; back: tf.Tensor1D } {
  const key = `${dh}/${dims}`;
  let o = orders.get(key);
  if (!o) {
    const toHalf = new Int32Array(dh);
    const back = new Int32Array(dh);
    const half = dims / 2;
    for (let i = 0; i < half; i++) {
      toHalf[i] = 2 * i;
      toHalf[i + half] = 2 * i + 1;
    }
    for (let c = dims; c < dh; c++) toHalf[c] = c;
    for (let c = 0; c < dh; c++) back[toHalf[c]!] = c;
    o = { toHalf: tf.keep(tf.tensor1d(toHalf, 'int32')), back: tf.keep(tf.tensor1d(back, 'int32')) };
    orders.set(key, o);
  }
  return o;
}

/**
 * Applies `rotateHalf` (a rotate-half RoPE of x's last axis, the head channels) in the given layout:
 * for `interleaved`, the channels are reordered to the half layout first and put back after.
 */
export function inRopeLayout(x: tf.Tensor, dims: number, layout: RopeLayout, rotateHalf: (x: tf.Tensor) => tf.Tensor): tf.Tensor {
  if (layout === 'half' || dims <= 0) return rotateHalf(x);
  const axis = x.rank - 1;
  const { toHalf, back } = interleavedOrder(x.shape[axis]!, dims);
  return tf.gather(rotateHalf(tf.gather(x, toHalf, axis)), back, axis);
}

/**
 * x: [B, H, T, dh]. Rotates the first `dims` channels (even, <= dh) by position (+ offset), pairs per
 * `layout` (default rotate-half).
 */
export function applyRope(x: tf.Tensor, dims: number, base = 10000, offset = 0, layout: RopeLayout = 'half'): tf.Tensor {
  if (dims <= 0) return x;
  checkRopeDims(dims, x.shape[3]!);
  return inRopeLayout(x, dims, layout, (t) => applyRopeHalf(t, dims, base, offset));
}

function applyRopeHalf(x: tf.Tensor, dims: number, base: number, offset: number): tf.Tensor {
  const dh = x.shape[3]!;
  const T = x.shape[2]!;
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
