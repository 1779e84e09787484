/**
 * KV caches for incremental causal decoding (docs/attention-moe.md, "Generation with a KV cache").
 *
 * A causal attention layer's output at position p depends only on q_p and on the keys and values of
 * positions 0..p, and those keys / values depend only on their own rows. So the new rows of a sequence,
 * at positions n0 .. n0+m-1 (n0 = positions already cached), can be computed from the cache alone:
 *
 *   K = [K_cache ; K_new],  V = [V_cache ; V_new]                     (n0 + m rows each)
 *   out_i = softmax(q_i K^T · scale + M_i) V,   M_i[j] = 0 if j <= n0 + i else -inf
 *
 * which is row n0 + i of the full pass's softmax(q K^T · scale + causal) V. For one new token
 * (m = 1) the mask is empty: the query sees every cached key. Everything after attention in a block
 * (norms, FFN, MoE layers whose routing of a row depends only on that row) is row-wise, so a whole
 * language model can decode one token per step (attention modules use core's cachedCausalAttention) with one {@link KVCache} per attention *application*
 * (a block shared by several repeats of a layer group is applied, and cached, once per repeat).
 */
import { MoelabError } from '../errors.js';
import { CACHE_WRITE_KERNEL, type CacheWriteAttrs, type CacheWriteInputs } from '../kernels/contract.js';
import { hasKernel } from '../ops/kernel.js';
import { tf } from '../tf.js';

/**
 * The cached tensors of ONE attention application: named entries ("k", "v", or whatever a module
 * needs) that grow along a shared time axis, at most `capacity` positions (the model's contextLength).
 * The cache owns its tensors (kept outside any `tf.tidy`); `dispose()` frees them.
 *
 * Storage: on a backend with the CACHE_WRITE_KERNEL of the kernel contract (moelab-cpu) each entry
 * is one tensor of `capacity` positions, allocated when the cache is first filled and written in
 * place (positions `length` and up are zeros). Elsewhere an entry is the exact-length tensor,
 * grown by a concat per append (tfjs tensors are immutable).
 */
export class KVCache {
  private readonly entries = new Map<string, tf.Tensor>();
  /** Exact-length copies of preallocated entries handed out by `append` / `get` (freed at the next append or reset). */
  private readonly views = new Map<string, tf.Tensor>();
  private size = 0;
  /** Whether the entries are preallocated buffers (decided when the cache is first filled). */
  private preallocated = false;
  /** The entries' time axis (fixed when the cache is first filled). */
  private timeAxis = 2;

  constructor(
    /** Most positions the cache may hold (the model's contextLength). */
    readonly capacity: number,
    /** Where the cache is used (the attention module's path), for error messages. */
    readonly where = '',
  ) {}

  /** Positions cached so far: the position of the next row appended. */
  get length(): number {
    return this.size;
  }

  /** The cached tensor of an entry, positions 0 .. length-1 (undefined before the first append). */
  get(name: string): tf.Tensor | undefined {
    const t = this.entries.get(name);
    if (!t || !this.preallocated) return t;
    return this.view(name, t, this.timeAxis);
  }

  /**
   * Append the rows of positions length .. length+m-1 to each entry (every tensor has the same m at
   * `timeAxis`; default 2, the [B, H, T, d] layout) and return the full tensors (positions 0 ..
   * length+m-1), which stay the cache's (valid until the next append or reset; do not dispose them).
   * Throws a one-line MoelabError when the cache would pass its capacity.
   */
  append<K extends string>(rows: Record<K, tf.Tensor>, timeAxis = 2): Record<K, tf.Tensor> {
    const { entries } = this.appendStored(rows, timeAxis);
    if (!this.preallocated) return entries;
    const out = {} as Record<K, tf.Tensor>;
    for (const n of Object.keys(entries) as K[]) out[n] = this.view(n, entries[n], timeAxis);
    return out;
  }

  /**
   * Append like {@link append}, and return each entry as it is stored: a tensor whose first `length`
   * positions are the cache, `length` = the positions cached now (the new rows included). On a
   * backend with CACHE_WRITE_KERNEL that is the preallocated buffer of `capacity` positions (what
   * cachedCausalAttention's `length` argument reads without a copy), elsewhere the exact-length
   * tensor. The tensors stay the cache's: valid until the next append or reset; do not dispose them.
   */
  appendStored<K extends string>(rows: Record<K, tf.Tensor>, timeAxis = 2): { entries: Record<K, tf.Tensor>; length: number } {
    const names = Object.keys(rows) as K[];
    if (names.length === 0) throw new MoelabError('KVCache.append: nothing to append', this.where || undefined);
    const m = rows[names[0]!].shape[timeAxis];
    if (m === undefined || m < 1)
      throw new MoelabError(`KVCache.append: "${names[0]}" has no time axis ${timeAxis} (shape [${rows[names[0]!].shape}])`, this.where || undefined);
    for (const n of names)
      if (rows[n].shape[timeAxis] !== m)
        throw new MoelabError(`KVCache.append: "${n}" has ${rows[n].shape[timeAxis]} new positions, "${names[0]}" has ${m}`, this.where || undefined);
    checkCapacity(this.size, m, this.capacity, this.where);
    if (this.entries.size === 0) {
      this.preallocated = hasKernel(CACHE_WRITE_KERNEL);
      this.timeAxis = timeAxis;
    }
    this.dropViews();
    const out = {} as Record<K, tf.Tensor>;
    for (const n of names) {
      const old = this.entries.get(n);
      const held = old ? (this.preallocated ? this.size : old.shape[timeAxis]) : 0;
      if ((old === undefined) !== (this.size === 0) || held !== this.size || (old && this.preallocated && timeAxis !== this.timeAxis))
        throw new MoelabError(`KVCache.append: entry "${n}" holds ${held} positions, the cache ${this.size}`, this.where || undefined);
      const full = this.preallocated ? this.write(old, rows[n], timeAxis) : tf.keep(old ? tf.concat([old, rows[n]], timeAxis) : rows[n].clone());
      if (old !== full) old?.dispose();
      this.entries.set(n, full);
      out[n] = full;
    }
    this.size += m;
    return { entries: out, length: this.size };
  }

  /** `rows` written at position `length` of the entry's buffer (a zero-filled one of `capacity` positions on the first append). */
  private write(buffer: tf.Tensor | undefined, rows: tf.Tensor, timeAxis: number): tf.Tensor {
    const cache = buffer ?? tf.zeros(rows.shape.map((s, i) => (i === timeAxis ? this.capacity : s)));
    const out = tf
      .engine()
      .runKernel(
        CACHE_WRITE_KERNEL,
        { cache, rows } satisfies CacheWriteInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
        { axis: timeAxis, position: this.size } satisfies CacheWriteAttrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor;
    tf.keep(out);
    if (!buffer) cache.dispose();
    return out;
  }

  /** Positions 0 .. length-1 of a preallocated entry, kept until the next append or reset. */
  private view(name: string, stored: tf.Tensor, timeAxis: number): tf.Tensor {
    let v = this.views.get(name);
    if (!v) {
      v = tf.keep(
        tf.slice(
          stored,
          stored.shape.map(() => 0),
          stored.shape.map((s, i) => (i === timeAxis ? this.size : s)),
        ),
      );
      this.views.set(name, v);
    }
    return v;
  }

  private dropViews(): void {
    for (const t of this.views.values()) t.dispose();
    this.views.clear();
  }

  /** Forget every position (frees the tensors; the cache can be filled again). */
  reset(): void {
    this.dropViews();
    for (const t of this.entries.values()) t.dispose();
    this.entries.clear();
    this.size = 0;
  }

  dispose(): void {
    this.reset();
  }
}

/** Throws the one-line "past the context length" error unless `cached + added <= capacity`. */
export function checkCapacity(cached: number, added: number, capacity: number, where = ''): void {
  if (cached + added > capacity)
    throw new MoelabError(
      `KV cache full: ${cached} cached + ${added} new positions exceed the model's contextLength ${capacity}; re-prefill the last window (generateTokens slides it) or stop`,
      where || undefined,
    );
}

/**
 * A language model's decoding state: one {@link KVCache} per attention application, in execution
 * order, and the number of positions they hold (all equal).
 */
export class DecodingCache {
  constructor(
    readonly layers: KVCache[],
    /** The model's contextLength: most positions the cache may hold. */
    readonly capacity: number,
  ) {}

  /** Positions cached (the position of the next token fed). */
  get length(): number {
    return this.layers[0]?.length ?? 0;
  }

  /** Forget every position (to re-prefill a window). */
  reset(): void {
    for (const c of this.layers) c.reset();
  }

  dispose(): void {
    for (const c of this.layers) c.dispose();
  }
}
