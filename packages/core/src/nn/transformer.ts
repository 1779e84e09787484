/**
 * The transformer language model and its block, with layer grouping (MoEUT): `groupSize` distinct
 * blocks run `repeats` times in "abab" (or "aabb") order with shared weights, so gradients from every
 * repeat accumulate into one parameter set.
 *
 * Block layouts (docs/attention-moe.md):
 *   sequential (pre-norm):  h = x + Attn(N1(x));   y = h + FFN(N2(h))
 *   parallel (GPT-J, PaLM, BAM arXiv 2408.08274 §3.1):  u = N(x);   y = x + Attn(u) + FFN(u)
 *     (one norm shared by both branches; `norms: 2` gives each branch its own, as GPT-NeoX does).
 * Positions: RoPE inside attention, and/or learned absolute embeddings added to the token embeddings
 * (`positionEmbedding: "learned"`, GPT-2's `wpe`): h_0[t] = E[token_t]·scale + P[t].
 *
 * Cached decoding (kv-cache.ts): `createCache()` gives one KVCache per scheduled block application
 * (G·R of them: a shared block caches its own keys and values once per repeat), `forwardCached`
 * runs only the new tokens through the stack, each application against its own cache.
 */
import { MoelabError } from '../errors.js';
import type { ForwardContext } from '../module.js';
import { Module, ModuleDict, ModuleList } from '../module.js';
import type { Rng } from '../rng.js';
import { tf } from '../tf.js';
import { type AttentionModule, type AttentionSources, assertInference } from './attention.js';
import { checkCapacity, DecodingCache, KVCache } from './kv-cache.js';
import { dropout, Embedding, Linear, type Norm } from './layers.js';
import type { FeedForward } from './moe.js';

export type NormPlacement = 'pre' | 'post' | 'peri';
export type BlockLayout = 'sequential' | 'parallel';

export class TransformerBlock extends Module {
  constructor(
    readonly attention: AttentionModule,
    readonly ffn: FeedForward,
    readonly ln1: Norm,
    /** The second norm; absent in a parallel block with one norm. */
    readonly ln2: Norm | undefined,
    readonly placement: NormPlacement,
    readonly dropoutRate = 0,
    readonly layout: BlockLayout = 'sequential',
  ) {
    super();
    if (!ln2 && layout === 'sequential') throw new Error('a sequential block needs two norms');
    if (layout === 'parallel' && placement !== 'pre') throw new Error(`a parallel block normalises its input (norm 'pre'), got '${placement}'`);
    this.child('attention', attention);
    this.child('ffn', ffn);
    this.child('ln1', ln1);
    if (ln2) this.child('ln2', ln2);
  }

  /** Forward FLOPs per token of the attention, FFN and norms (see {@link Module.flopsPerToken}). */
  override flopsPerToken(seqLen: number): number {
    let n = 0;
    for (const c of this.children.values()) n += c.flopsPerToken(seqLen);
    return n;
  }

  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    return this.run(x, ctx, (a, s) => this.attention.forward(a, ctx, s));
  }

  /** The block on the new rows x [B, m, d] of a cached decoding step; `cache` is this application's. */
  forwardCached(x: tf.Tensor, ctx: ForwardContext, cache: KVCache): tf.Tensor {
    const attention = this.attention;
    if (!attention.forwardCached)
      throw new MoelabError(`this attention module (${attention.constructor.name}) has no cached path (forwardCached)`, attention.path);
    return this.run(x, ctx, (a, s) => attention.forwardCached!(a, ctx, cache, s));
  }

  private run(x: tf.Tensor, ctx: ForwardContext, attend: (x: tf.Tensor, sources?: AttentionSources) => tf.Tensor): tf.Tensor {
    const drop = (t: tf.Tensor) => dropout(t, this.dropoutRate, ctx.rng, ctx.training);
    if (this.layout === 'parallel') {
      const u = this.ln1.forward(x);
      const u2 = this.ln2 ? this.ln2.forward(x) : u;
      ctx.ffnResidualObserver?.(this.ffn.path, x);
      return tf.add(tf.add(x, drop(attend(u))), drop(this.ffn.forward(u2, ctx)));
    }
    const ln2 = this.ln2!;
    switch (this.placement) {
      case 'pre': {
        const h = tf.add(x, drop(attend(this.ln1.forward(x))));
        ctx.ffnResidualObserver?.(this.ffn.path, h);
        return tf.add(h, drop(this.ffn.forward(ln2.forward(h), ctx)));
      }
      case 'post': {
        const h = this.ln1.forward(tf.add(x, drop(attend(x))));
        ctx.ffnResidualObserver?.(this.ffn.path, h);
        return ln2.forward(tf.add(h, drop(this.ffn.forward(h, ctx))));
      }
      case 'peri': {
        // Peri-LN (MoEUT, docs/moeut.md#peri-layernorm): normalise only what feeds a softmax/sigmoid (queries, keys, routers);
        // values, expert inputs and the residual stream stay raw.
        const xn = this.ln1.forward(x);
        const h = tf.add(x, drop(attend(x, { q: xn, k: xn, v: x })));
        ctx.ffnResidualObserver?.(this.ffn.path, h);
        return tf.add(h, drop(this.ffn.forward(h, ctx, { routerInput: ln2.forward(h) })));
      }
    }
  }
}

export interface TransformerLMOptions {
  vocabSize: number;
  dModel: number;
  contextLength: number;
  repeats: number;
  order: 'abab' | 'aabb';
  tieEmbeddings: boolean;
  headBias: boolean;
  embeddingStd: number;
  /** Multiply embeddings by this (some recipes use sqrt(dModel)). */
  embeddingScale: number;
  /** 'learned': absolute position embeddings [contextLength, dModel] added to the token embeddings. */
  positionEmbedding?: 'none' | 'learned';
}

export class TransformerLM extends Module {
  readonly embedding: Embedding;
  readonly layers: TransformerBlock[];
  readonly outNorm: Norm;
  readonly head?: Linear;
  readonly positions?: Embedding;

  constructor(
    readonly options: TransformerLMOptions,
    blocks: TransformerBlock[],
    outNorm: Norm,
    rng: Rng,
  ) {
    super();
    this.embedding = this.child('embedding', new Embedding(options.vocabSize, options.dModel, rng, options.embeddingStd));
    // `transformer.layers.<i>`: the official MoEUT state_dict layout.
    this.child('transformer', new ModuleDict({ layers: new ModuleList(blocks) }));
    this.layers = blocks;
    this.outNorm = this.child('out_norm', outNorm);
    if (!options.tieEmbeddings) this.head = this.child('lm_head', new Linear(options.dModel, options.vocabSize, rng, { bias: options.headBias }));
    // Drawn after everything else, so that models without it keep their initialisation.
    if (options.positionEmbedding === 'learned')
      this.positions = this.child('position_embedding', new Embedding(options.contextLength, options.dModel, rng, options.embeddingStd));
    this.assignPaths();
  }

  get vocabSize(): number {
    return this.options.vocabSize;
  }

  get contextLength(): number {
    return this.options.contextLength;
  }

  /** The order in which distinct blocks run: abab = 0,1,..,G-1,0,1,..; aabb = 0,0,..,1,1,.. */
  get schedule(): number[] {
    const G = this.layers.length;
    const R = this.options.repeats;
    const out: number[] = [];
    if (this.options.order === 'abab') for (let r = 0; r < R; r++) for (let i = 0; i < G; i++) out.push(i);
    else for (let i = 0; i < G; i++) for (let r = 0; r < R; r++) out.push(i);
    return out;
  }

  /** MACs per token of one forward pass: every scheduled block (shared blocks count once per repeat), the final norm and the readout. */
  override macsPerToken(seqLen = this.options.contextLength): number {
    let n = 0;
    for (const i of this.schedule) n += this.layers[i]!.macsPerToken(seqLen);
    n += this.outNorm.macsPerToken(seqLen);
    n += this.head ? this.head.macsPerToken(seqLen) : this.options.vocabSize * this.options.dModel;
    return n;
  }

  /** Forward FLOPs per token: every scheduled block and the readout (embedding lookups cost none). */
  override flopsPerToken(seqLen = this.options.contextLength): number {
    let n = 0;
    for (const i of this.schedule) n += this.layers[i]!.flopsPerToken(seqLen);
    n += this.outNorm.flopsPerToken(seqLen);
    n += this.head ? this.head.flopsPerToken(seqLen) : 2 * this.options.vocabSize * this.options.dModel;
    return n;
  }

  /** tokens [B, T] int32 -> logits [B, T, V]. */
  forward(tokens: tf.Tensor, ctx: ForwardContext): tf.Tensor3D {
    if (tokens.shape[1]! > this.options.contextLength) {
      throw new MoelabError(`sequence length ${tokens.shape[1]} exceeds the model's contextLength ${this.options.contextLength}`, 'tokens');
    }
    let h = this.embed(tokens, ctx, 0);
    for (const i of this.schedule) h = this.layers[i]!.forward(h, ctx);
    return this.readout(h, ctx);
  }

  /**
   * Why this model cannot decode with a KV cache (the first module that says so, with its path), or
   * null when it can: every attention module needs `forwardCached`, and no module may object
   * (Module.cachedDecodingBlocker: batch-dependent routers, capacity drops, ...).
   */
  cacheBlocker(): string | null {
    for (const block of this.layers)
      if (!block.attention.forwardCached) return `${block.attention.path}: this attention module (${block.attention.constructor.name}) has no cached path`;
    for (const m of this.modules()) {
      const why = m.cachedDecodingBlocker?.();
      if (why) return `${m.path || 'model'}: ${why}`;
    }
    return null;
  }

  /** A fresh, empty decoding cache: one KVCache per scheduled block application. Throws a MoelabError when {@link cacheBlocker} objects. */
  createCache(): DecodingCache {
    const why = this.cacheBlocker();
    if (why) throw new MoelabError(`cannot decode with a KV cache: ${why}`);
    const C = this.options.contextLength;
    return new DecodingCache(
      this.schedule.map((i, s) => new KVCache(C, `${this.layers[i]!.attention.path} (application ${s})`)),
      C,
    );
  }

  /**
   * Cached decoding: tokens [B, m] int32 are the positions cache.length .. cache.length+m-1 of the
   * sequences `cache` holds (m = the prompt to prefill, or 1 new token per step); returns their logits
   * [B, m, V], equal to those rows of forward() over the whole prefix. Inference only. A cache fed past
   * the contextLength throws a one-line MoelabError naming the limit.
   */
  forwardCached(tokens: tf.Tensor, ctx: ForwardContext, cache: DecodingCache): tf.Tensor3D {
    assertInference(ctx, this.path);
    const schedule = this.schedule;
    if (cache.layers.length !== schedule.length)
      throw new MoelabError(`this cache has ${cache.layers.length} layer caches, the model runs ${schedule.length} blocks: use model.createCache()`);
    if (tokens.rank !== 2) throw new MoelabError(`forwardCached: tokens must be [batch, positions], got [${tokens.shape}]`);
    const n0 = cache.length;
    checkCapacity(n0, tokens.shape[1]!, this.options.contextLength);
    let h = this.embed(tokens, ctx, n0);
    schedule.forEach((i, s) => {
      h = this.layers[i]!.forwardCached(h, ctx, cache.layers[s]!);
    });
    return this.readout(h, ctx);
  }

  private embed(tokens: tf.Tensor, ctx: ForwardContext, positionOffset: number): tf.Tensor {
    const ids = tokens.dataSync();
    ctx.tokenIds = ids instanceof Int32Array ? ids : Int32Array.from(ids as ArrayLike<number>);
    const V = this.options.vocabSize;
    for (let i = 0; i < ctx.tokenIds.length; i++) {
      const id = ctx.tokenIds[i]!;
      if (id < 0 || id >= V) {
        const T = tokens.shape[1]!;
        throw new MoelabError(
          `token id ${id} at [${Math.floor(i / T)}, ${i % T}] is outside the vocabulary [0, ${V}) (vocabSize ${V}; byte tokens need 256)`,
          'tokens',
        );
      }
    }
    ctx.carry = new Map(); // per-forward state (ForwardContext.carry) starts empty in every forward pass
    ctx.positionOffset = positionOffset;
    let h = this.embedding.forward(tokens);
    if (this.options.embeddingScale !== 1) h = tf.mul(h, this.options.embeddingScale);
    // Learned absolute positions of the rows: positionOffset .. positionOffset+T-1.
    if (this.positions) h = tf.add(h, tf.slice(this.positions.weight, [positionOffset, 0], [tokens.shape[1]!, -1]));
    return h;
  }

  private readout(h: tf.Tensor, ctx: ForwardContext): tf.Tensor3D {
    for (const m of this.modules()) m.finalizeForward?.(ctx);
    const hn = this.outNorm.forward(h);
    if (this.head) return this.head.forward(hn) as tf.Tensor3D;
    const [B, T, d] = hn.shape as [number, number, number];
    return tf.reshape(tf.matMul(tf.reshape(hn, [B * T, d]), this.embedding.weight, false, true), [B, T, this.options.vocabSize]);
  }
}
