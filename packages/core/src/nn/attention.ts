/**
 * Causal scaled dot-product attention and standard multi-head attention with RoPE, grouped-query
 * attention (GQA, arXiv 2305.13245: kvHeads < heads key/value heads, each shared by heads / kvHeads query
 * heads) and optional RMSNorm of queries and keys (per head as in Qwen3, or over the whole projection as
 * in OLMoE, arXiv 2409.02060), RoPE context extension (rope.ts) and sliding-window attention (each
 * query sees itself and the w - 1 keys before it; Mistral 7B, arXiv 2310.06825).
 * The registry entry (`attention: mha`) lives in @moelab/attention; the building blocks live here so
 * that attention variants (SwitchHead, MoA, ...) reuse them.
 */
import type { ForwardContext } from '../module.js';
import { MoelabError } from '../errors.js';
import { Module } from '../module.js';
import { hasKernel } from '../ops/kernel.js';
import type { Rng } from '../rng.js';
import { tf } from '../tf.js';
import type { KVCache } from './kv-cache.js';
import {
  CACHED_ATTENTION_KERNEL,
  type CachedAttentionAttrs,
  type CachedAttentionInputs,
  CAUSAL_ATTENTION_KERNEL,
  type CausalAttentionAttrs,
  type CausalAttentionInputs,
  ROPE_KERNEL,
  type RopeAttrs,
  type RopeInputs,
} from '../kernels/contract.js';
import { Linear, RMSNorm } from './layers.js';
import { applyRope, checkRopeDims, checkRopeScaling, inRopeLayout, type RopeLayout, type RopeScaling, ropeTables } from './rope.js';

const masks = new Map<string, tf.Tensor2D>();

/**
 * Additive causal mask [T, T]: 0 where key j is visible to query i, -1e9 elsewhere. Visible: j <= i,
 * and with a sliding `window` w also j > i - w (each query sees itself and the w - 1 keys before it, as
 * transformers' sliding-window mask). Cached per length and window.
 */
export function causalMask(T: number, window?: number): tf.Tensor2D {
  const w = window !== undefined && window < T ? window : undefined;
  const key = `${T}/${w ?? ''}`;
  let m = masks.get(key);
  if (!m) {
    const a = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) if (j > i || (w !== undefined && j <= i - w)) a[i * T + j] = -1e9;
    m = tf.keep(tf.tensor2d(a, [T, T]));
    masks.set(key, m);
  }
  return m;
}

/** Whether a sliding window of `window` keys masks anything in a causal pass over T positions. */
export function windowMasks(window: number | undefined, T: number): boolean {
  return window !== undefined && window < T;
}

/**
 * softmax(q k^T * scale + causal) v for q, k, v of shape [B, H, T, dh], optionally with a sliding
 * `window` ({@link causalMask}); through the backend's fused kernel when it has one
 * (CAUSAL_ATTENTION_KERNEL in the kernel contract). The kernel contract has no window: where the window
 * masks something (window < T) the attention takes the generic path.
 */
export function causalAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale = 1 / Math.sqrt(q.shape[3]!), window?: number): tf.Tensor {
  const T = q.shape[2]!;
  if (
    q.rank === 4 &&
    !windowMasks(window, T) &&
    hasKernel(CAUSAL_ATTENTION_KERNEL) &&
    sameShape(q.shape, k.shape) &&
    sameShape(q.shape.slice(0, 3), v.shape.slice(0, 3))
  ) {
    const [out, lse] = tf
      .engine()
      .runKernel(
        CAUSAL_ATTENTION_KERNEL,
        { q, k, v } satisfies CausalAttentionInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
        { scale } satisfies CausalAttentionAttrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor[];
    // lse is the backward kernel's (saved through the gradient's outputsToSave), not the caller's.
    lse!.dispose();
    return out!;
  }
  const scores = tf.add(tf.mul(tf.matMul(q as tf.Tensor4D, k as tf.Tensor4D, false, true), scale), causalMask(T, window));
  return tf.matMul(tf.softmax(scores, -1) as tf.Tensor4D, v as tf.Tensor4D);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((s, i) => s === b[i]);
}

/** Whether the backend has the fused kernels {@link fusedCausalAttention} needs (RoPE only when ropeDims > 0). */
export function hasFusedAttention(ropeDims: number): boolean {
  return hasKernel(CAUSAL_ATTENTION_KERNEL) && (ropeDims <= 0 || hasKernel(ROPE_KERNEL));
}

/**
 * Causal self-attention straight from the projections' layout, q, k [B, T, H*dk] and v [B, T, H*dv],
 * through the backend's fused kernels (RoPE of the first `ropeDims` channels of each head, then
 * attention, both with layout 'bthd'): no head split / merge transposes. Returns [B, T, H*dv]. Only
 * where {@link hasFusedAttention} holds, and without a sliding window (the kernel has none); elsewhere
 * use splitHeads, applyRope, causalAttention, mergeHeads. `ropeScaling` changes the cos / sin tables
 * only (rope.ts), which the fused RoPE kernel takes as inputs.
 */
export function fusedCausalAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  heads: number,
  ropeDims: number,
  ropeBase = 10000,
  scale?: number,
  ropeLayout: RopeLayout = 'half',
  ropeScaling?: RopeScaling,
): tf.Tensor {
  if (q.rank !== 3) throw new Error(`fusedCausalAttention: q must be [B, T, heads*headDim], got [${q.shape}]`);
  const [B, T, D] = q.shape as [number, number, number];
  const dk = D / heads;
  const dv = v.shape[2]! / heads;
  const toHeads = (t: tf.Tensor, d: number) => tf.reshape(t, [B, T, heads, d]);
  const rotate = (t: tf.Tensor) => {
    if (ropeDims <= 0) return t;
    checkRopeDims(ropeDims, dk);
    const { cos, sin } = ropeTables(T, ropeDims, ropeBase, 0, ropeScaling);
    return inRopeLayout(
      t,
      ropeDims,
      ropeLayout,
      (x) =>
        tf
          .engine()
          .runKernel(
            ROPE_KERNEL,
            { x, cos, sin } satisfies RopeInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
            { inverse: false, layout: 'bthd' } satisfies RopeAttrs as unknown as tf.NamedAttrMap,
          ) as tf.Tensor,
    );
  };
  const [out, lse] = tf
    .engine()
    .runKernel(
      CAUSAL_ATTENTION_KERNEL,
      { q: rotate(toHeads(q, dk)), k: rotate(toHeads(k, dk)), v: toHeads(v, dv) } satisfies CausalAttentionInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
      { scale: scale ?? 1 / Math.sqrt(dk), layout: 'bthd' } satisfies CausalAttentionAttrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
  lse!.dispose();
  return tf.reshape(out!, [B, T, heads * dv]);
}

/**
 * Causal attention of m new query rows against all n = n0 + m cached positions (see kv-cache.ts:
 * out_i = softmax(q_i K^T · scale + M_i) V, M_i[j] = -inf for j > n - m + i): q [B, H, m, dk],
 * k [B, Hkv, Tk, dk], v [B, Hkv, Tk, dv] -> [B, H, m, dv]. Only the first n = `length` positions of k
 * and v are read (default: all; more is a preallocated cache, KVCache.appendStored). With Hkv < H
 * (grouped-query attention) query head h reads key / value head floor(h·Hkv/H). Through the
 * backend's CACHED_ATTENTION_KERNEL when it has one; otherwise with n0 = 0 this is
 * {@link causalAttention} (the backend's fused kernel when it has one), and with m = 1 no mask is needed.
 */
export function cachedCausalAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  scale = 1 / Math.sqrt(q.shape[3]!),
  length = k.shape[2]!,
  window?: number,
): tf.Tensor {
  const m = q.shape[2]!;
  const n = length;
  if (n < m) throw new MoelabError(`cachedCausalAttention: ${m} queries but only ${n} keys (the keys must include the new rows)`);
  if (n > k.shape[2]!) throw new MoelabError(`cachedCausalAttention: length ${n} exceeds the ${k.shape[2]} positions of the keys`);
  // A sliding window that hides some of the n keys takes the generic path (the kernel contract has no window).
  const windowed = windowMasks(window, n);
  if (q.rank === 4 && !windowed && hasKernel(CACHED_ATTENTION_KERNEL) && (n > m || k.shape[2]! > n || k.shape[1] !== q.shape[1])) {
    return tf
      .engine()
      .runKernel(
        CACHED_ATTENTION_KERNEL,
        { q, k, v } satisfies CachedAttentionInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
        { scale, length: n } satisfies CachedAttentionAttrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor;
  }
  if (k.shape[2]! > n) {
    k = tf.slice(k, [0, 0, 0, 0], [-1, -1, n, -1]);
    v = tf.slice(v, [0, 0, 0, 0], [-1, -1, n, -1]);
  }
  k = repeatKvHeads(k, q.shape[1]!);
  v = repeatKvHeads(v, q.shape[1]!);
  if (n === m) return causalAttention(q, k, v, scale, window);
  const scores = tf.mul(tf.matMul(q as tf.Tensor4D, k as tf.Tensor4D, false, true), scale);
  const masked = m === 1 && !windowed ? scores : tf.add(scores, offsetCausalMask(m, n, windowed ? window : undefined));
  return tf.matMul(tf.softmax(masked, -1) as tf.Tensor4D, v as tf.Tensor4D);
}

/**
 * One cached attention step of a module that caches its keys and values as entries "k" and "v"
 * ([B, Hkv, T, d], Hkv dividing the query heads: see cachedCausalAttention): appends the new rows'
 * k, v and attends q [B, H, m, dk] over every cached position, reading the cache where it is stored
 * (no exact-length copy on backends that preallocate it). A prefill into an empty cache is causal
 * attention over the new rows, as in the full pass.
 */
export function appendAndAttend(cache: KVCache, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale = 1 / Math.sqrt(q.shape[3]!), window?: number): tf.Tensor {
  const n0 = cache.length;
  const { entries, length } = cache.appendStored({ k, v });
  if (n0 === 0) return causalAttention(q, repeatKvHeads(k, q.shape[1]!), repeatKvHeads(v, q.shape[1]!), scale, window);
  return cachedCausalAttention(q, entries.k, entries.v, scale, length, window);
}

/**
 * Additive mask [m, n] of m new rows after n - m cached ones: row i (position n - m + i) sees keys
 * j <= n - m + i, and with a sliding `window` w only those with j > n - m + i - w.
 */
function offsetCausalMask(m: number, n: number, window?: number): tf.Tensor2D {
  const a = new Float32Array(m * n);
  const n0 = n - m;
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) if (j > n0 + i || (window !== undefined && j <= n0 + i - window)) a[i * n + j] = -1e9;
  return tf.tensor2d(a, [m, n]);
}

/** MACs per token of causal attention mixing: q.k and A.v, each heads x headDim per key, (seqLen + 1) / 2 keys on average. */
export function causalMixingMacs(heads: number, headDim: number, seqLen: number): number {
  return heads * headDim * (seqLen + 1);
}

/**
 * Forward FLOPs per token of attention mixing in the Kaplan / BAM Table 10 convention: scores and the
 * weighted sum together count 2 · n_ctx · d_attn (d_attn = heads · headDim), whatever the mask.
 */
export function attentionMixingFlops(heads: number, headDim: number, nCtx: number): number {
  return 2 * nCtx * heads * headDim;
}

/** [B, T, H*dh] -> [B, H, T, dh] */
export function splitHeads(x: tf.Tensor, heads: number): tf.Tensor {
  const [B, T, D] = x.shape as [number, number, number];
  // One position (a cached decoding step) or one head: the same memory order, no transpose needed.
  if (T === 1 || heads === 1) return tf.reshape(x, [B, heads, T, D / heads]);
  return tf.transpose(tf.reshape(x, [B, T, heads, D / heads]), [0, 2, 1, 3]);
}

/** [B, H, T, dh] -> [B, T, H*dh] */
export function mergeHeads(x: tf.Tensor): tf.Tensor {
  const [B, H, T, dh] = x.shape as [number, number, number, number];
  if (T === 1 || H === 1) return tf.reshape(x, [B, T, H * dh]);
  return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [B, T, H * dh]);
}

const kvIndex = new Map<string, tf.Tensor1D>();

/** Source index of each of heads·width target slots: slot h·width + c reads kv head floor(h / (heads / kvHeads)). */
function kvRepeatIndex(kvHeads: number, heads: number, width: number): tf.Tensor1D {
  const key = `${kvHeads}/${heads}/${width}`;
  let idx = kvIndex.get(key);
  if (!idx) {
    const r = heads / kvHeads;
    const a = new Int32Array(heads * width);
    for (let h = 0; h < heads; h++) for (let c = 0; c < width; c++) a[h * width + c] = Math.floor(h / r) * width + c;
    idx = tf.keep(tf.tensor1d(a, 'int32'));
    kvIndex.set(key, idx);
  }
  return idx;
}

/**
 * Grouped-query attention's key / value sharing on the projections' layout: x [..., kvHeads·dh] ->
 * [..., heads·dh], query head h reading kv head floor(h / (heads / kvHeads)) (HF's repeat_kv). The
 * identity when kvHeads = heads.
 */
export function repeatKvChannels(x: tf.Tensor, kvHeads: number, heads: number): tf.Tensor {
  if (kvHeads === heads) return x;
  const dh = x.shape[x.rank - 1]! / kvHeads;
  return tf.gather(x, kvRepeatIndex(kvHeads, heads, dh), x.rank - 1);
}

/** The same on the head layout: x [B, kvHeads, T, dh] -> [B, heads, T, dh]. */
export function repeatKvHeads(x: tf.Tensor, heads: number): tf.Tensor {
  const kvHeads = x.shape[1]!;
  if (kvHeads === heads) return x;
  return tf.gather(x, kvRepeatIndex(kvHeads, heads, 1), 1);
}

/** Separate inputs of the query, key and value projections (peri-norm feeds normalised q/k, raw v); each defaults to `x`. */
export interface AttentionSources {
  q?: tf.Tensor;
  k?: tf.Tensor;
  v?: tf.Tensor;
}

/** What every attention module implements. */
export interface AttentionModule extends Module {
  /** Causal self-attention over x [B, T, d] (every position sees itself and earlier ones) -> [B, T, d]. */
  forward(x: tf.Tensor, ctx: ForwardContext, sources?: AttentionSources): tf.Tensor;
  /**
   * Cached (incremental) attention, for decoding; inference only. x [B, m, d] holds the rows of
   * positions cache.length .. cache.length+m-1 of sequences whose earlier positions this module put
   * into `cache`; it appends what later positions need (keys, values: each already position-encoded,
   * e.g. rotated by RoPE at its own position) and returns the outputs of the new rows, equal to those
   * rows of `forward` over the whole prefix. Modules without it make a model decode by re-running the
   * window (generateTokens falls back and says why). See docs/attention-moe.md, "Generation with a KV cache".
   */
  forwardCached?(x: tf.Tensor, ctx: ForwardContext, cache: KVCache, sources?: AttentionSources): tf.Tensor;
}

/** Throws unless the forward context is an inference one: caches hold no gradients, dropout and noise would differ. */
export function assertInference(ctx: ForwardContext, where: string): void {
  if (ctx.training)
    throw new MoelabError('cached decoding is for inference: call forwardCached with a forward context whose training is false', where || undefined);
}

export interface MHAOptions {
  heads: number;
  /** Key / value heads (grouped-query attention); divides `heads`. Default: heads. */
  kvHeads?: number;
  headDim?: number;
  /** Channels of each head rotated by RoPE (0 = no RoPE). Default: the whole head. */
  ropeDims?: number;
  ropeBase?: number;
  /** Which channels RoPE pairs (rope.ts). Default `half` (rotate_half). */
  ropeLayout?: RopeLayout;
  /** Biases on all four projections. */
  bias?: boolean;
  /** Biases on the q, k, v projections (Qwen2: yes, o_proj none). Default: `bias`. */
  qkvBias?: boolean;
  /** RMSNorm of queries and keys before RoPE: per head (`head`, Qwen3) or over the whole projection (`projection`, OLMoE). */
  qkNorm?: 'none' | 'head' | 'projection';
  /** The q/k norms' epsilon. Default 1e-6. */
  qkNormEps?: number;
  /** RoPE context extension (rope.ts: linear, llama3, yarn). Default: none. */
  ropeScaling?: RopeScaling;
  /** Sliding-window attention: each query sees itself and the slidingWindow - 1 keys before it. Default: the whole context. */
  slidingWindow?: number;
}

export class MultiHeadAttention extends Module implements AttentionModule {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly o: Linear;
  readonly qNorm?: RMSNorm;
  readonly kNorm?: RMSNorm;
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly ropeDims: number;
  readonly ropeBase: number;
  readonly ropeLayout: RopeLayout;
  readonly qkNorm: 'none' | 'head' | 'projection';
  readonly ropeScaling?: RopeScaling;
  readonly slidingWindow?: number;

  constructor(dModel: number, opts: MHAOptions, rng: Rng) {
    super();
    this.heads = opts.heads;
    this.kvHeads = opts.kvHeads ?? opts.heads;
    if (!Number.isInteger(this.kvHeads) || this.kvHeads < 1 || this.heads % this.kvHeads !== 0)
      throw new MoelabError(`kvHeads ${this.kvHeads} must divide heads ${this.heads} (each key/value head serves heads / kvHeads query heads)`, 'kvHeads');
    this.headDim = opts.headDim ?? dModel / opts.heads;
    if (!Number.isInteger(this.headDim)) throw new MoelabError(`dModel ${dModel} is not divisible by heads ${opts.heads}; set headDim`, 'heads');
    if (opts.ropeDims !== undefined) checkRopeDims(opts.ropeDims, this.headDim);
    this.ropeDims = opts.ropeDims ?? this.headDim;
    this.ropeBase = opts.ropeBase ?? 10000;
    this.ropeLayout = opts.ropeLayout ?? 'half';
    this.qkNorm = opts.qkNorm ?? 'none';
    if (opts.ropeScaling) checkRopeScaling(opts.ropeScaling);
    this.ropeScaling = opts.ropeScaling;
    if (opts.slidingWindow !== undefined && !(Number.isInteger(opts.slidingWindow) && opts.slidingWindow >= 1))
      throw new MoelabError(`slidingWindow must be a positive integer (got ${opts.slidingWindow})`, 'slidingWindow');
    this.slidingWindow = opts.slidingWindow;
    const inner = this.heads * this.headDim;
    const kvInner = this.kvHeads * this.headDim;
    const qkvBias = opts.qkvBias ?? opts.bias;
    this.q = this.child('q_proj', new Linear(dModel, inner, rng, { bias: qkvBias }));
    this.k = this.child('k_proj', new Linear(dModel, kvInner, rng, { bias: qkvBias }));
    this.v = this.child('v_proj', new Linear(dModel, kvInner, rng, { bias: qkvBias }));
    this.o = this.child('o_proj', new Linear(inner, dModel, rng, { bias: opts.bias }));
    if (this.qkNorm !== 'none') {
      const eps = opts.qkNormEps ?? 1e-6;
      const perHead = this.qkNorm === 'head';
      this.qNorm = this.child('q_norm', new RMSNorm(perHead ? this.headDim : inner, eps));
      this.kNorm = this.child('k_norm', new RMSNorm(perHead ? this.headDim : kvInner, eps));
    }
  }

  /** Projections plus causal attention mixing (q.k and A.v over (seqLen + 1) / 2 keys on average). */
  override macsPerToken(seqLen: number): number {
    return super.macsPerToken(seqLen) + causalMixingMacs(this.heads, this.headDim, seqLen);
  }

  /** QKV and output projections (2 FLOPs per weight) plus 2 · n_ctx · d_attn of mixing (BAM Table 10). */
  override flopsPerToken(seqLen: number): number {
    return (
      this.q.flopsPerToken(seqLen) +
      this.k.flopsPerToken(seqLen) +
      this.v.flopsPerToken(seqLen) +
      this.o.flopsPerToken(seqLen) +
      attentionMixingFlops(this.heads, this.headDim, seqLen)
    );
  }

  /** q [B, T, heads·dh], k, v [B, T, kvHeads·dh]: the projections, q and k normalised when qkNorm is set. */
  private project(x: tf.Tensor, sources: AttentionSources): [tf.Tensor, tf.Tensor, tf.Tensor] {
    let q = this.q.forward(sources.q ?? x);
    let k = this.k.forward(sources.k ?? x);
    const v = this.v.forward(sources.v ?? x);
    if (this.qNorm && this.kNorm) {
      if (this.qkNorm === 'head') {
        const perHead = (t: tf.Tensor, norm: RMSNorm) => {
          const shape = t.shape;
          return tf.reshape(norm.forward(tf.reshape(t, [...shape.slice(0, -1), -1, this.headDim])), shape);
        };
        q = perHead(q, this.qNorm);
        k = perHead(k, this.kNorm);
      } else {
        q = this.qNorm.forward(q);
        k = this.kNorm.forward(k);
      }
    }
    return [q, k, v];
  }

  forward(x: tf.Tensor, _ctx: ForwardContext, sources: AttentionSources = {}): tf.Tensor {
    const [q, k0, v0] = this.project(x, sources);
    // GQA: every query head gets its group's key / value head (rotating k after the copy is the same as before).
    const k = repeatKvChannels(k0, this.kvHeads, this.heads);
    const v = repeatKvChannels(v0, this.kvHeads, this.heads);
    // The fused kernels have no sliding window: a window shorter than the sequence takes the generic path.
    if (hasFusedAttention(this.ropeDims) && !windowMasks(this.slidingWindow, x.shape[1]!))
      return this.o.forward(fusedCausalAttention(q, k, v, this.heads, this.ropeDims, this.ropeBase, undefined, this.ropeLayout, this.ropeScaling));
    const rope = (t: tf.Tensor) => applyRope(splitHeads(t, this.heads), this.ropeDims, this.ropeBase, 0, this.ropeLayout, this.ropeScaling);
    return this.o.forward(mergeHeads(causalAttention(rope(q), rope(k), splitHeads(v, this.heads), undefined, this.slidingWindow)));
  }

  /**
   * The new rows at positions n0 = cache.length ..: q, k rotated at their own positions (RoPE offset
   * n0), k and v appended to the cache ([B, kvHeads, T, dh] entries "k", "v": GQA caches kvHeads heads),
   * attention over all cached positions (appendAndAttend).
   */
  forwardCached(x: tf.Tensor, ctx: ForwardContext, cache: KVCache, sources: AttentionSources = {}): tf.Tensor {
    assertInference(ctx, this.path);
    const n0 = cache.length;
    const [qp, kp, vp] = this.project(x, sources);
    const q = applyRope(splitHeads(qp, this.heads), this.ropeDims, this.ropeBase, n0, this.ropeLayout, this.ropeScaling);
    const k = applyRope(splitHeads(kp, this.kvHeads), this.ropeDims, this.ropeBase, n0, this.ropeLayout, this.ropeScaling);
    const v = splitHeads(vp, this.kvHeads);
    return this.o.forward(mergeHeads(appendAndAttend(cache, q, k, v, undefined, this.slidingWindow)));
  }
}
