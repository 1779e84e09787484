/**
 * Causal scaled dot-product attention and standard multi-head attention with RoPE.
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
import { Linear } from './layers.js';
import {
  CAUSAL_ATTENTION_KERNEL,
  type CausalAttentionAttrs,
  type CausalAttentionInputs,
  ROPE_KERNEL,
  type RopeAttrs,
  type RopeInputs,
} from '../kernels/contract.js';
import { applyRope, checkRopeDims, ropeTables } from './rope.js';

const masks = new Map<number, tf.Tensor2D>();

/** Additive causal mask [T, T]: 0 on and below the diagonal, -1e9 above. Cached per length. */
export function causalMask(T: number): tf.Tensor2D {
  let m = masks.get(T);
  if (!m) {
    const a = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) a[i * T + j] = -1e9;
    m = tf.keep(tf.tensor2d(a, [T, T]));
    masks.set(T, m);
  }
  return m;
}

/**
 * softmax(q k^T * scale + causal) v for q, k, v of shape [B, H, T, dh]; through the backend's fused
 * kernel when it has one (CAUSAL_ATTENTION_KERNEL in the kernel contract).
 */
export function causalAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale = 1 / Math.sqrt(q.shape[3]!)): tf.Tensor {
  const T = q.shape[2]!;
  if (q.rank === 4 && hasKernel(CAUSAL_ATTENTION_KERNEL) && sameShape(q.shape, k.shape) && sameShape(q.shape.slice(0, 3), v.shape.slice(0, 3))) {
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
  const scores = tf.add(tf.mul(tf.matMul(q as tf.Tensor4D, k as tf.Tensor4D, false, true), scale), causalMask(T));
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
 * where {@link hasFusedAttention} holds; elsewhere use splitHeads, applyRope, causalAttention, mergeHeads.
 */
export function fusedCausalAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, heads: number, ropeDims: number, ropeBase = 10000, scale?: number): tf.Tensor {
  if (q.rank !== 3) throw new Error(`fusedCausalAttention: q must be [B, T, heads*headDim], got [${q.shape}]`);
  const [B, T, D] = q.shape as [number, number, number];
  const dk = D / heads;
  const dv = v.shape[2]! / heads;
  const toHeads = (t: tf.Tensor, d: number) => tf.reshape(t, [B, T, heads, d]);
  const rotate = (t: tf.Tensor) => {
    if (ropeDims <= 0) return t;
    checkRopeDims(ropeDims, dk);
    const { cos, sin } = ropeTables(T, ropeDims, ropeBase);
    return tf
      .engine()
      .runKernel(
        ROPE_KERNEL,
        { x: t, cos, sin } satisfies RopeInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
        { inverse: false, layout: 'bthd' } satisfies RopeAttrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor;
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
 * out_i = softmax(q_i K^T · scale + M_i) V, M_i[j] = -inf for j > n - m + i): q [B, H, m, dk], k [B, H, n, dk], v [B, H, n, dv] -> [B, H, m, dv]. With n0 = 0 this is
 * {@link causalAttention} (the backend's fused kernel when it has one); with m = 1 no mask is needed.
 */
export function cachedCausalAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale = 1 / Math.sqrt(q.shape[3]!)): tf.Tensor {
  const m = q.shape[2]!;
  const n = k.shape[2]!;
  if (n < m) throw new MoelabError(`cachedCausalAttention: ${m} queries but only ${n} keys (the keys must include the new rows)`);
  if (n === m) return causalAttention(q, k, v, scale);
  const scores = tf.mul(tf.matMul(q as tf.Tensor4D, k as tf.Tensor4D, false, true), scale);
  const masked = m === 1 ? scores : tf.add(scores, offsetCausalMask(m, n));
  return tf.matMul(tf.softmax(masked, -1) as tf.Tensor4D, v as tf.Tensor4D);
}

/** Additive mask [m, n] of m new rows after n - m cached ones: row i sees keys j <= n - m + i. */
function offsetCausalMask(m: number, n: number): tf.Tensor2D {
  const a = new Float32Array(m * n);
  const n0 = n - m;
  for (let i = 0; i < m; i++) for (let j = n0 + i + 1; j < n; j++) a[i * n + j] = -1e9;
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
  headDim?: number;
  /** Channels of each head rotated by RoPE (0 = no RoPE). Default: the whole head. */
  ropeDims?: number;
  ropeBase?: number;
  bias?: boolean;
}

export class MultiHeadAttention extends Module implements AttentionModule {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly o: Linear;
  readonly heads: number;
  readonly headDim: number;
  readonly ropeDims: number;
  readonly ropeBase: number;

  constructor(dModel: number, opts: MHAOptions, rng: Rng) {
    super();
    this.heads = opts.heads;
    this.headDim = opts.headDim ?? dModel / opts.heads;
    if (!Number.isInteger(this.headDim)) throw new MoelabError(`dModel ${dModel} is not divisible by heads ${opts.heads}; set headDim`, 'heads');
    if (opts.ropeDims !== undefined) checkRopeDims(opts.ropeDims, this.headDim);
    this.ropeDims = opts.ropeDims ?? this.headDim;
    this.ropeBase = opts.ropeBase ?? 10000;
    const inner = this.heads * this.headDim;
    this.q = this.child('q_proj', new Linear(dModel, inner, rng, { bias: opts.bias }));
    this.k = this.child('k_proj', new Linear(dModel, inner, rng, { bias: opts.bias }));
    this.v = this.child('v_proj', new Linear(dModel, inner, rng, { bias: opts.bias }));
    this.o = this.child('o_proj', new Linear(inner, dModel, rng, { bias: opts.bias }));
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

  forward(x: tf.Tensor, _ctx: ForwardContext, sources: AttentionSources = {}): tf.Tensor {
    if (hasFusedAttention(this.ropeDims)) {
      const [q, k, v] = [this.q.forward(sources.q ?? x), this.k.forward(sources.k ?? x), this.v.forward(sources.v ?? x)];
      return this.o.forward(fusedCausalAttention(q, k, v, this.heads, this.ropeDims, this.ropeBase));
    }
    const q = applyRope(splitHeads(this.q.forward(sources.q ?? x), this.heads), this.ropeDims, this.ropeBase);
    const k = applyRope(splitHeads(this.k.forward(sources.k ?? x), this.heads), this.ropeDims, this.ropeBase);
    const v = splitHeads(this.v.forward(sources.v ?? x), this.heads);
    return this.o.forward(mergeHeads(causalAttention(q, k, v)));
  }

  /**
   * The new rows at positions n0 = cache.length ..: q, k rotated at their own positions (RoPE offset
   * n0), k and v appended to the cache ([B, H, T, dh] entries "k", "v"), attention over all cached
   * positions (cachedCausalAttention).
   */
  forwardCached(x: tf.Tensor, ctx: ForwardContext, cache: KVCache, sources: AttentionSources = {}): tf.Tensor {
    assertInference(ctx, this.path);
    const n0 = cache.length;
    const q = applyRope(splitHeads(this.q.forward(sources.q ?? x), this.heads), this.ropeDims, this.ropeBase, n0);
    const k = applyRope(splitHeads(this.k.forward(sources.k ?? x), this.heads), this.ropeDims, this.ropeBase, n0);
    const v = splitHeads(this.v.forward(sources.v ?? x), this.heads);
    const all = cache.append({ k, v });
    return this.o.forward(mergeHeads(cachedCausalAttention(q, all.k, all.v)));
  }
}
