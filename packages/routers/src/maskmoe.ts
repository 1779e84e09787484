/**
 * MaskMoE, Su et al. 2024 (arXiv 2407.09816; docs/routers.md#maskmoe): a fixed routing mask per vocabulary id, built before
 * training from corpus frequencies. Infrequent ids see exactly ONE (random) expert, frequent ids see
 * `visibleExperts` random experts; routing is the softmax top-k over the visible experts only.
 *
 *   M_v ∈ {0, −∞}^E  (1 visible entry for rare ids v, visibleExperts for the ⌈frequentFraction·V⌉ most frequent)
 *   p_t = softmax(z_t + M_{id_t});   I_t = TopK_{min(k, |visible|)}(p_t);   g_t,e = p_t,e  (raw; `renormalize`)
 *
 * The paper's frequency cut-off, V and k are not known to us, so `frequentFraction` and
 * `visibleExperts` are required options with no default. Masks are drawn per layer (seed + layer index).
 * Needs the token ids of the forward pass (`ctx.tokenIds`, set by the language model) and the corpus
 * frequencies of every id (like the balanced hash). Aux: canonical Switch loss on p (÷ mean experts per
 * token), optional z-loss. Causal-safe and batch-independent.
 */
import { Config, defineEntry, type ForwardContext, Module, MoelabError, type RouteInfo, type RouteResult, type Router, Rng, Type, tf } from '@moelab/core';
import { Balancer, balanceFields } from './balance.js';
import { checkK, gatherAt, planFromChoices, renormPerToken, topkRows } from './common.js';

export interface MaskMoEOptions {
  k: number;
  frequentFraction: number;
  visibleExperts: number;
  frequencies: number[];
  seed: number;
  renormalize: boolean;
  balanceCoef: number;
  zLossCoef: number;
}

/** Visible-expert masks [V * E] (1 = visible) from corpus frequencies: rare ids one expert, frequent ids `visible`. */
export function buildMasks(freq: ArrayLike<number>, E: number, frequentFraction: number, visible: number, seed: number): Uint8Array {
  const V = freq.length;
  const order = Array.from({ length: V }, (_, v) => v).sort((a, b) => freq[b]! - freq[a]! || a - b);
  const frequent = new Uint8Array(V);
  const nFrequent = Math.ceil(frequentFraction * V);
  for (let i = 0; i < nFrequent; i++) frequent[order[i]!] = 1;
  const rng = new Rng(seed);
  const masks = new Uint8Array(V * E);
  for (let v = 0; v < V; v++) {
    const perm = Array.from({ length: E }, (_, e) => e);
    const n = frequent[v] ? visible : 1;
    for (let s = 0; s < n; s++) {
      const j = s + rng.int(E - s);
      [perm[s], perm[j]] = [perm[j]!, perm[s]!];
      masks[v * E + perm[s]!] = 1;
    }
  }
  return masks;
}

export class MaskMoERouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly masks: Uint8Array;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: MaskMoEOptions,
    rng: Rng,
  ) {
    super();
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
    this.masks = buildMasks(options.frequencies, numExperts, options.frequentFraction, options.visibleExperts, options.seed);
    this.balancer = new Balancer({
      balanceCoef: options.balanceCoef,
      zLossCoef: options.zLossCoef,
      balanceCounts: 'all',
      balanceScope: 'batch',
      balanceParity: 'canonical',
    });
  }

  get expertsPerToken(): number {
    return Math.min(this.options.k, this.options.visibleExperts);
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const T = x.shape[0];
    const E = this.numExperts;
    const V = this.options.frequencies.length;
    const ids = ctx.tokenIds;
    if (!ids || ids.length !== T)
      throw new MoelabError(
        `the maskmoe router needs the token ids of the forward pass (ctx.tokenIds with ${T} entries); use it inside a language model`,
        this.path || undefined,
      );
    const add = new Float32Array(T * E);
    for (let t = 0; t < T; t++) {
      const id = ids[t]!;
      if (id < 0 || id >= V) throw new MoelabError(`token id ${id} is outside the mask table (${V} ids)`, this.path || undefined);
      for (let e = 0; e < E; e++) if (!this.masks[id * E + e]) add[t * E + e] = -1e30;
    }
    const logits = tf.matMul(x, this.weight, false, true) as tf.Tensor2D;
    const probs = tf.softmax(tf.add(logits, tf.tensor2d(add, [T, E]))) as tf.Tensor2D;
    const sel = Float32Array.from(probs.dataSync());
    for (let i = 0; i < T * E; i++) if (add[i] !== 0) sel[i] = Number.NEGATIVE_INFINITY;
    const k = this.options.k;
    const { plan, flat } = planFromChoices(topkRows(sel, T, E, k), T, k, E);
    let weight = gatherAt(probs, flat);
    if (this.options.renormalize) weight = renormPerToken(weight, plan);
    this.balancer.push(ctx, this.path, probs, plan, plan.size / Math.max(1, T), info, logits);
    return { plan, weight, probs, logits };
  }
}

export const maskMoE = defineEntry({
  kind: 'router',
  name: 'maskmoe',
  description:
    'MaskMoE (Su et al. 2024): fixed per-token-id expert masks from corpus frequencies (rare ids: one expert, frequent ids: V), softmax top-k over the visible.',
  reference: 'docs/routers.md#maskmoe; arXiv 2407.09816',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 2, description: 'experts per token among the visible ones (rare ids get 1)' }),
    frequentFraction: Type.Number({
      minimum: 0,
      maximum: 1,
      description: 'fraction of vocabulary ids (most frequent first) that count as frequent (paper value UNKNOWN: required)',
    }),
    visibleExperts: Type.Integer({ minimum: 1, description: 'experts a frequent id may use (paper V UNKNOWN: required)' }),
    frequencies: Type.Array(Type.Number({ minimum: 0 }), { description: 'corpus count of each token id (its length is the vocabulary size)' }),
    seed: Type.Integer({ default: 0, description: 'mask seed; the layer index is added' }),
    renormalize: Type.Boolean({ default: false, description: 'renormalise the selected probabilities to sum to 1' }),
    ...balanceFields(0.01),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    if (c.visibleExperts > E) throw new MoelabError(`visibleExperts = ${c.visibleExperts} exceeds the number of experts (${E})`, `${ctx.path}.visibleExperts`);
    const V = ctx.env.vocabSize as number | undefined;
    if (V !== undefined && c.frequencies.length !== V)
      throw new MoelabError(`has ${c.frequencies.length} entries, expected the model's vocabSize = ${V}`, `${ctx.path}.frequencies`);
    const layer = (ctx.env.layerIndex as number | undefined) ?? 0;
    return new MaskMoERouter(
      ctx.need('dModel'),
      E,
      {
        k: c.k,
        frequentFraction: c.frequentFraction,
        visibleExperts: c.visibleExperts,
        frequencies: c.frequencies,
        seed: c.seed + layer,
        renormalize: c.renormalize,
        balanceCoef: c.balanceCoef,
        zLossCoef: c.zLossCoef,
      },
      ctx.rng,
    );
  },
});
