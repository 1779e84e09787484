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
 *
 * Context extension (`RopeScaling`, the `rope_scaling` of Hugging Face configs) changes the inverse
 * frequencies ω_i = base^(−2i/dims) and may scale cos and sin by an attention factor m (so q·k by m²):
 * - `linear` (position interpolation, arXiv 2306.15595): ω'_i = ω_i / s;
 * - `llama3` (Llama 3.1, github.com/meta-llama/llama-models): with wavelength λ_i = 2π/ω_i and the
 *   pretraining context L, λ_i < L/h keeps ω_i, λ_i > L/l takes ω_i / s, and between them
 *   ω'_i = (1 − γ) ω_i / s + γ ω_i with γ = (L/λ_i − l) / (h − l) (l, h: low / high frequency factors);
 * - `yarn` (arXiv 2309.00071): the dimension that turns r times over L is d(r) = dims·ln(L / (2πr)) / (2 ln base);
 *   lo = d(β_fast), hi = d(β_slow) (floored / ceiled unless `truncate` is false, clamped to [0, dims−1]),
 *   ramp_i = clamp((i − lo) / (hi − lo), 0, 1), ω'_i = ω_i / s · ramp_i + ω_i · (1 − ramp_i), and
 *   m = attentionFactor, default 0.1 ln s + 1 (1 when s <= 1).
 */
import { MoelabError } from '../errors.js';
import { ROPE_KERNEL, type RopeAttrs, type RopeInputs } from '../kernels/contract.js';
import { hasKernel } from '../ops/kernel.js';
import { tf } from '../tf.js';

const cache = new Map<string, { cos: tf.Tensor2D; sin: tf.Tensor2D }>();

/** RoPE context extension: which transform of the inverse frequencies (see the file header) and its numbers. */
export interface RopeScaling {
  type: 'linear' | 'llama3' | 'yarn';
  /** s: how many times longer the extended context is than the pretraining one (>= 1 in practice). */
  factor: number;
  /** L: the pretraining context (llama3, yarn). */
  originalContext?: number;
  /** llama3: wavelengths above L / lowFreqFactor are interpolated fully. Default 1. */
  lowFreqFactor?: number;
  /** llama3: wavelengths below L / highFreqFactor are kept. Default 4. */
  highFreqFactor?: number;
  /** yarn: β_fast, rotations over L above which a dimension is kept. Default 32. */
  betaFast?: number;
  /** yarn: β_slow, rotations over L below which a dimension is interpolated fully. Default 1. */
  betaSlow?: number;
  /** yarn: m, the factor on cos and sin. Default 0.1 ln(factor) + 1. */
  attentionFactor?: number;
  /** yarn: round the ramp's ends to whole dimensions (floor / ceil). Default true. */
  truncate?: boolean;
}

/** Throws a one-line error naming `where` unless the scaling's numbers are usable. */
export function checkRopeScaling(s: RopeScaling, where = 'ropeScaling'): void {
  if (!(s.factor > 0)) throw new MoelabError(`factor must be positive (got ${s.factor})`, `${where}.factor`);
  if (s.type === 'linear') return;
  if (s.originalContext === undefined || !(s.originalContext > 0))
    throw new MoelabError(`${s.type} RoPE scaling needs originalContext, the pretraining context length`, `${where}.originalContext`);
  if (s.type === 'llama3' && !((s.highFreqFactor ?? 4) > (s.lowFreqFactor ?? 1)))
    throw new MoelabError(`highFreqFactor ${s.highFreqFactor ?? 4} must exceed lowFreqFactor ${s.lowFreqFactor ?? 1}`, `${where}.highFreqFactor`);
  if (s.type === 'yarn' && !((s.betaFast ?? 32) > 0 && (s.betaSlow ?? 1) > 0))
    throw new MoelabError('betaFast and betaSlow must be positive', `${where}.betaFast`);
}

/** The inverse frequencies ω_i (i < dims/2) of RoPE with base `base`, transformed by `scaling` (file header). */
export function ropeInvFreq(dims: number, base = 10000, scaling?: RopeScaling): Float64Array {
  const half = dims / 2;
  const inv = Float64Array.from({ length: half }, (_, i) => 1 / base ** ((2 * i) / dims));
  if (!scaling) return inv;
  const s = scaling.factor;
  if (scaling.type === 'linear') return inv.map((w) => w / s);
  const L = scaling.originalContext!;
  if (scaling.type === 'llama3') {
    const lo = scaling.lowFreqFactor ?? 1;
    const hi = scaling.highFreqFactor ?? 4;
    return inv.map((w) => {
      const wavelength = (2 * Math.PI) / w;
      if (wavelength < L / hi) return w;
      if (wavelength > L / lo) return w / s;
      const smooth = (L / wavelength - lo) / (hi - lo);
      return (1 - smooth) * (w / s) + smooth * w;
    });
  }
  const dimOf = (rotations: number) => (dims * Math.log(L / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
  const truncate = scaling.truncate ?? true;
  let lo = dimOf(scaling.betaFast ?? 32);
  let hi = dimOf(scaling.betaSlow ?? 1);
  if (truncate) {
    lo = Math.floor(lo);
    hi = Math.ceil(hi);
  }
  lo = Math.max(lo, 0);
  hi = Math.min(hi, dims - 1);
  if (lo === hi) hi += 0.001;
  return inv.map((w, i) => {
    const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
    return (w / s) * ramp + w * (1 - ramp);
  });
}

/** m, the factor on RoPE's cos and sin: 1, or YaRN's attention factor (0.1 ln s + 1 by default). */
export function ropeAttentionFactor(scaling?: RopeScaling): number {
  if (scaling?.type !== 'yarn') return 1;
  return scaling.attentionFactor ?? (scaling.factor <= 1 ? 1 : 0.1 * Math.log(scaling.factor) + 1);
}

/** Throws unless `dims` (the rotated channels) is even and at most the head size. */
export function checkRopeDims(dims: number, headDim: number): void {
  if (dims % 2 !== 0 || dims > headDim) throw new MoelabError(`RoPE dims must be even and at most the head size (${dims} vs ${headDim})`, 'ropeDims');
}

/**
 * The cos / sin tables [T, dims] of positions offset..offset+T-1, as float32 arrays: m·cos(p ω_i) and
 * m·sin(p ω_i) in both halves (rotate-half layout), ω and m from {@link ropeInvFreq} / {@link ropeAttentionFactor}.
 */
export function ropeTableData(T: number, dims: number, base = 10000, offset = 0, scaling?: RopeScaling): { cos: Float32Array; sin: Float32Array } {
  const half = dims / 2;
  const inv = ropeInvFreq(dims, base, scaling);
  const m = ropeAttentionFactor(scaling);
  const cos = new Float32Array(T * dims);
  const sin = new Float32Array(T * dims);
  for (let p = 0; p < T; p++) {
    for (let i = 0; i < half; i++) {
      // Plain RoPE: p / base^(2i/dims), the same float64 angles as the ONNX export's tables.
      const ang = scaling ? (p + offset) * inv[i]! : (p + offset) / base ** ((2 * i) / dims);
      cos[p * dims + i] = cos[p * dims + i + half] = m * Math.cos(ang);
      sin[p * dims + i] = sin[p * dims + i + half] = m * Math.sin(ang);
    }
  }
  return { cos, sin };
}

/** The cos / sin tables [T, dims] of positions offset..offset+T-1 (cached, kept); see {@link ropeTableData}. */
export function ropeTables(T: number, dims: number, base = 10000, offset = 0, scaling?: RopeScaling): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  const key = `${T}/${dims}/${base}/${offset}${scaling ? `/${JSON.stringify(scaling)}` : ''}`;
  let t = cache.get(key);
  if (!t) {
    const { cos, sin } = ropeTableData(T, dims, base, offset, scaling);
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
 * `layout` (default rotate-half), frequencies per `scaling` (default plain RoPE).
 */
export function applyRope(x: tf.Tensor, dims: number, base = 10000, offset = 0, layout: RopeLayout = 'half', scaling?: RopeScaling): tf.Tensor {
  if (dims <= 0) return x;
  checkRopeDims(dims, x.shape[3]!);
  return inRopeLayout(x, dims, layout, (t) => applyRopeHalf(t, dims, base, offset, scaling));
}

function applyRopeHalf(x: tf.Tensor, dims: number, base: number, offset: number, scaling?: RopeScaling): tf.Tensor {
  const dh = x.shape[3]!;
  const T = x.shape[2]!;
  const { cos, sin } = ropeTables(T, dims, base, offset, scaling);
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
