/**
 * BAM's soft Mixture-of-Attention (Zhang et al., "BAM! Just Like That: Simple and Efficient Parameter
 * Upcycling for Mixture of Experts", arXiv 2408.08274, §3; no official code). N attention experts, each
 * a complete causal attention of the dense model's shape (H query heads, H_kv key/value heads of width
 * d_h, RoPE optional), mixed per token by a softmax router over all experts:
 *
 *   g = softmax(u W_r)                                                   [T, N]   W_r: router.weight [d, N]
 *   O_j = concat_i softmax(Q^j_i K^j_{⌊i/r⌋}ᵀ / √d_h + M) V^j_{⌊i/r⌋} · W_o^j          r = H / H_kv
 *   y = Σ_j g_j ⊙ O_j
 *
 * kv: "experts" — every expert owns W_q^j, W_k^j, W_v^j, W_o^j (`experts.{j}.wq|wk|wv|wo`);
 * kv: "shared"  — W_k, W_v are one pair per layer (`shared_kv.wk|wv`), K and V are computed once and every
 *                 expert's queries attend to them; only W_q^j, W_o^j are per expert.
 * Shapes ([in, out], y = x W): wq [d, H·d_h], wk / wv [d, H_kv·d_h], wo [H·d_h, d]. No biases.
 * routing "topk" keeps the k largest g per token (weights raw, or renormalised over the k): the paper's
 * ablation (Table 6); all N experts are still evaluated (dense compute), only the weights are sparse.
 *
 * Implementation: the N experts' queries, keys and values come from one matrix product each (the
 * experts' weights concatenated), all N·H heads go through one causal-attention call (the backend's fused
 * kernel where it has one), and the output is one product of the g-weighted heads with the stacked W_o:
 * Σ_j g_j (heads_j W_o^j) = [g_1 heads_1 ‖ … ‖ g_N heads_N] [W_o^1; …; W_o^N].
 *
 * Cached decoding: keys and values are cached as computed (before the GQA / sharing expansion), so the
 * KV-sharing cache is the dense model's size and the KV-experts cache N times that (BAM §3.3).
 *
 * Routing statistics per call: `load` = mean g per expert, `entropy` = mean entropy of g (nats); no
 * auxiliary loss (the paper describes none for the attention router). Costs follow BAM Table 10:
 * router 2 N d, QKV 2 N d (H + 2 H_kv) d_h (shared: the K/V part once), mixing 2 N n_ctx H d_h,
 * output 2 N H d_h d FLOPs per token.
 */
import {
  type AttentionModule,
  type AttentionSources,
  assertInference,
  cachedCausalAttention,
  type KVCache,
  attentionMixingFlops,
  Config,
  causalMixingMacs,
  defineEntry,
  type ForwardContext,
  flatten2d,
  Module,
  ModuleList,
  MoelabError,
  mergeHeads,
  applyRope,
  type Rng,
  splitHeads,
  Type,
  tf,
} from '@moelab/core';
import { expandKvHeads, gatherKvHeads, mergedCausalAttention, ParamGroup, routingStatsOf } from './common.js';

export interface BamOptions {
  experts: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  rope: boolean;
  ropeBase: number;
  kv: 'experts' | 'shared';
  routing: { type: 'soft' } | { type: 'topk'; k: number; weighting: 'raw' | 'renormalise' };
  routerStd: number;
}

export class BamSoftMoA extends Module implements AttentionModule {
  readonly router: ParamGroup;
  readonly experts: ParamGroup[];
  readonly sharedKv?: ParamGroup;
  readonly ropeDims: number;

  constructor(
    readonly dModel: number,
    readonly options: BamOptions,
    rng: Rng,
  ) {
    super();
    const { experts: N, heads: H, kvHeads: Hkv, headDim: dh } = options;
    const d = dModel;
    if (H % Hkv !== 0) throw new MoelabError(`heads ${H} is not a multiple of kvHeads ${Hkv}`);
    this.ropeDims = options.rope ? dh : 0;
    this.router = this.child('router', new ParamGroup());
    this.router.add('weight', rng.normalArray(d * N, options.routerStd), [d, N]);
    const std = 1 / Math.sqrt(d);
    const experts: ParamGroup[] = [];
    for (let j = 0; j < N; j++) {
      const e = new ParamGroup();
      e.add('wq', rng.normalArray(d * H * dh, std), [d, H * dh]);
      if (options.kv === 'experts') {
        e.add('wk', rng.normalArray(d * Hkv * dh, std), [d, Hkv * dh]);
        e.add('wv', rng.normalArray(d * Hkv * dh, std), [d, Hkv * dh]);
      }
      e.add('wo', rng.normalArray(H * dh * d, 1 / Math.sqrt(H * dh)), [H * dh, d]);
      experts.push(e);
    }
    this.experts = experts;
    this.child('experts', new ModuleList(experts));
    if (options.kv === 'shared') {
      this.sharedKv = this.child('shared_kv', new ParamGroup());
      this.sharedKv.add('wk', rng.normalArray(d * Hkv * dh, std), [d, Hkv * dh]);
      this.sharedKv.add('wv', rng.normalArray(d * Hkv * dh, std), [d, Hkv * dh]);
    }
  }

  /** Per-token mixture weights [N_tokens, N] of `u` (softmax, then top-k and its weighting if set). */
  weights(u: tf.Tensor): tf.Tensor2D {
    const g = tf.softmax(tf.matMul(flatten2d(u), this.router.get('weight'))) as tf.Tensor2D;
    const r = this.options.routing;
    if (r.type === 'soft') return g;
    const N = this.options.experts;
    const { indices } = tf.topk(g, r.k);
    const mask = tf.sum(tf.oneHot(indices, N, 1, 0, 'float32'), 1);
    const kept = tf.mul(g, mask) as tf.Tensor2D;
    return r.weighting === 'raw' ? kept : (tf.div(kept, tf.sum(kept, 1, true)) as tf.Tensor2D);
  }

  private cat(name: 'wq' | 'wk' | 'wv' | 'wo'): tf.Tensor2D {
    const ws = this.experts.map((e) => e.get(name));
    return (ws.length === 1 ? ws[0]! : tf.concat(ws, name === 'wo' ? 0 : 1)) as tf.Tensor2D;
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: AttentionSources = {}): tf.Tensor {
    const { experts: N, heads: H, kvHeads: Hkv } = this.options;
    const qSrc = sources.q ?? x;
    const kSrc = sources.k ?? x;
    const vSrc = sources.v ?? x;
    const [B, T] = qSrc.shape as [number, number];
    const proj = (src: tf.Tensor, w: tf.Tensor2D) => tf.reshape(tf.matMul(flatten2d(src), w), [B, T, -1]);
    const q = proj(qSrc, this.cat('wq')); // [B, T, N·H·dh]
    let k: tf.Tensor;
    let v: tf.Tensor;
    if (this.sharedKv) {
      k = expandKvHeads(proj(kSrc, this.sharedKv.get('wk') as tf.Tensor2D), N, H, Hkv, true);
      v = expandKvHeads(proj(vSrc, this.sharedKv.get('wv') as tf.Tensor2D), N, H, Hkv, true);
    } else {
      k = expandKvHeads(proj(kSrc, this.cat('wk')), N, H, Hkv, false);
      v = expandKvHeads(proj(vSrc, this.cat('wv')), N, H, Hkv, false);
    }
    const heads = mergedCausalAttention(q, k, v, N * H, this.ropeDims, this.options.ropeBase); // [B, T, N·H·dh]
    return this.mix(heads, this.weights(qSrc), ctx, B, T);
  }

  /**
   * Cached decoding (inference): the new rows' queries attend to every cached position. The cache holds
   * the keys and values as computed, before GQA / sharing expansion ([B, N·H_kv, T, dh] with KV experts,
   * [B, H_kv, T, dh] with shared K/V: one cache the size of the dense model's), keys rotated at their
   * own positions; the mixture weights of a row depend on that row only.
   */
  forwardCached(x: tf.Tensor, ctx: ForwardContext, cache: KVCache, sources: AttentionSources = {}): tf.Tensor {
    assertInference(ctx, this.path);
    const { experts: N, heads: H, kvHeads: Hkv } = this.options;
    const qSrc = sources.q ?? x;
    const [B, m] = qSrc.shape as [number, number];
    const n0 = cache.length;
    const proj = (src: tf.Tensor, w: tf.Tensor2D) => tf.reshape(tf.matMul(flatten2d(src), w), [B, m, -1]);
    const rope = (t: tf.Tensor, heads: number) => applyRope(splitHeads(t, heads), this.ropeDims, this.options.ropeBase, n0);
    const q = rope(proj(qSrc, this.cat('wq')), N * H);
    const groups = this.sharedKv ? 1 : N;
    const wk = this.sharedKv ? (this.sharedKv.get('wk') as tf.Tensor2D) : this.cat('wk');
    const wv = this.sharedKv ? (this.sharedKv.get('wv') as tf.Tensor2D) : this.cat('wv');
    const all = cache.append({ k: rope(proj(sources.k ?? x, wk), groups * Hkv), v: splitHeads(proj(sources.v ?? x, wv), groups * Hkv) });
    const shared = !!this.sharedKv;
    const heads = mergeHeads(cachedCausalAttention(q, gatherKvHeads(all.k, N, H, Hkv, shared), gatherKvHeads(all.v, N, H, Hkv, shared)));
    return this.mix(heads, this.weights(qSrc), ctx, B, m);
  }

  /** y = [g_1 heads_1 ‖ … ‖ g_N heads_N] [W_o^1; …; W_o^N] for heads [B, T, N·H·dh] and g [B·T, N]. */
  private mix(heads: tf.Tensor, g: tf.Tensor2D, ctx: ForwardContext, B: number, T: number): tf.Tensor {
    const { experts: N, heads: H, headDim: dh } = this.options;
    const rows = B * T;
    this.record(ctx, g);
    const weighted = tf.reshape(tf.mul(tf.reshape(heads, [rows, N, H * dh]), tf.reshape(g, [rows, N, 1])), [rows, N * H * dh]);
    return tf.reshape(tf.matMul(weighted, this.cat('wo')), [B, T, this.dModel]);
  }

  private record(ctx: ForwardContext, g: tf.Tensor2D): void {
    const r = this.options.routing;
    ctx.routing.push(routingStatsOf(this.path, g, r.type === 'soft' ? this.options.experts : r.k));
  }

  /** Experts whose parameters a token uses: all N (soft) or k (top-k). */
  private get activeExperts(): number {
    const r = this.options.routing;
    return r.type === 'soft' ? this.options.experts : r.k;
  }

  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    for (const m of this.modules()) seen.add(m);
    const perExpert = this.experts[0]!.parameterCount();
    return this.router.parameterCount() + (this.sharedKv?.parameterCount() ?? 0) + this.activeExperts * perExpert;
  }

  /** Router, the active experts' projections (shared K/V once) and their causal mixing. */
  override macsPerToken(seqLen: number): number {
    const { heads: H, headDim: dh } = this.options;
    const n = this.activeExperts;
    return this.router.parameterCount() + (this.sharedKv?.parameterCount() ?? 0) + n * (this.experts[0]!.parameterCount() + causalMixingMacs(H, dh, seqLen));
  }

  /** BAM Table 10: router 2 N d, QKV and output projections at 2 FLOPs per weight, mixing 2 N n_ctx H d_h. */
  override flopsPerToken(seqLen: number): number {
    const { heads: H, headDim: dh } = this.options;
    const n = this.activeExperts;
    return (
      2 * (this.router.parameterCount() + (this.sharedKv?.parameterCount() ?? 0)) +
      n * (2 * this.experts[0]!.parameterCount() + attentionMixingFlops(H, dh, seqLen))
    );
  }
}

const routingSchema = Type.Union(
  [
    Type.Object({ type: Type.Literal('soft') }, { additionalProperties: false }),
    Type.Object(
      {
        type: Type.Literal('topk'),
        k: Type.Integer({ minimum: 1, description: 'experts kept per token' }),
        weighting: Type.Union([Type.Literal('raw'), Type.Literal('renormalise')], { default: 'raw' }),
      },
      { additionalProperties: false },
    ),
  ],
  { default: { type: 'soft' }, description: 'soft: every token uses every expert (the paper); topk: keep the k largest weights (ablation)' },
);

export const bamSoftMoA = defineEntry({
  kind: 'attention',
  name: 'bam-soft-moa',
  description: "BAM's soft Mixture-of-Attention: N whole attention experts (or shared K/V), softmax router over all of them.",
  reference: 'docs/attention-moe.md; BAM arXiv 2408.08274 §3.1, Tables 6, 9, 10',
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 4, description: 'attention experts N (BAM: seed + 3 domain models)' }),
    heads: Type.Integer({ minimum: 1, default: 4, description: 'query heads H per expert' }),
    kvHeads: Type.Optional(Type.Integer({ minimum: 1, description: 'key/value heads H_kv per expert (GQA); default heads' })),
    headDim: Type.Optional(Type.Integer({ minimum: 1, description: 'd_h; default dModel / heads' })),
    rope: Type.Boolean({ default: true, description: 'rotary positions on every head (BAM uses RoPE)' }),
    ropeBase: Type.Number({ exclusiveMinimum: 0, default: 10000 }),
    kv: Type.Union([Type.Literal('experts'), Type.Literal('shared')], {
      default: 'experts',
      description: 'experts: each expert has its own K, V; shared: one K, V per layer, per-expert Q and O',
    }),
    routing: routingSchema,
    routerInit: Type.Object(
      { dist: Type.Literal('normal', { default: 'normal' }), std: Type.Number({ minimum: 0, default: 0.02 }) },
      { additionalProperties: false, default: { dist: 'normal', std: 0.02 } },
    ),
  }),
  create: (c, ctx) => {
    const d = ctx.need('dModel');
    if (c.headDim === undefined && d % c.heads !== 0)
      throw new MoelabError(`dModel ${d} is not divisible by heads ${c.heads}; set headDim`, `${ctx.path}.heads`);
    const kvHeads = c.kvHeads ?? c.heads;
    if (c.heads % kvHeads !== 0) throw new MoelabError(`heads ${c.heads} is not a multiple of kvHeads ${kvHeads}`, `${ctx.path}.kvHeads`);
    const routing = c.routing as BamOptions['routing'];
    if (routing.type === 'topk' && routing.k > c.experts)
      throw new MoelabError(`k = ${routing.k} exceeds the number of experts (${c.experts})`, `${ctx.path}.routing.k`);
    return new BamSoftMoA(
      d,
      {
        experts: c.experts,
        heads: c.heads,
        kvHeads,
        headDim: c.headDim ?? d / c.heads,
        rope: c.rope,
        ropeBase: c.ropeBase,
        kv: c.kv,
        routing,
        routerStd: c.routerInit.std,
      },
      ctx.rng,
    );
  },
});
