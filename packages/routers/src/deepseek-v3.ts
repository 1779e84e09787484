/**
 * DeepSeek-V3 router: sigmoid affinities, normalised over the selected experts, aux-loss-free bias
 * balancing, group-limited selection, complementary sequence-wise loss (arXiv 2412.19437, 2408.15664). docs/routers.md#deepseek-v3.
 * Also `topk-sigmoid-normalised` (Nguyen et al. 2025, arXiv 2505.10860): the same gate without bias, groups or scaling.
 *
 *   s = σ(W x)                                   (float32, no bias)
 *   c = s + b                                    b: buffer `e_score_correction_bias`, selection only
 *   groups (optional): groupScore_g = sum of the top-2 of c in group g (or its max); keep the `topkGroup`
 *                      best groups; experts of the other groups are excluded (−∞, Megatron; HF uses 0)
 *   I = TopK(c restricted to kept groups)
 *   g_e = γ · s_e / Σ_{j∈I} s_j                  (normalise: true; else γ · s_e)
 *
 * b_e += u · sign(mean_j c_j − c_e) after each optimiser step (counts summed over its micro-batches).
 * Sequence-wise loss (α = 1e-4): per sequence, f_i = E/(K·T)·#{t: i ∈ TopK(s_t)} (indicator from the
 * UNBIASED scores, as in the paper and Megatron; `fromBiasedSelection` uses the actual routing),
 * P_i = mean_t s_i,t / Σ_j s_j,t; L = mean over sequences of Σ_i f_i P_i.
 */
import {
  Config,
  defineEntry,
  editRouterLogits,
  type ForwardContext,
  Module,
  MoelabError,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  Type,
  tf,
  zLoss,
} from '@moelab/core';
import { sequenceSwitchLoss } from './balance.js';
import { BiasController, checkK, gatherAt, kSchema, planFromChoices, renormPerToken, sequenceLayout, topkRows } from './common.js';
import { limitGroups } from './deepseek-moe.js';

export interface DeepSeekV3Options {
  k: number;
  normalize: boolean;
  scale: number;
  groups: number;
  topkGroup: number;
  groupScore: 'top2-sum' | 'max';
  expertBias: boolean;
  biasUpdateRate: number;
  seqBalanceCoef: number;
  fromBiasedSelection: boolean;
  zLossCoef: number;
}

export class DeepSeekV3Router extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly bias?: BiasController;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: DeepSeekV3Options,
    rng: Rng,
  ) {
    super();
    if (options.k > numExperts) throw new MoelabError(`k = ${options.k} exceeds the number of experts (${numExperts})`);
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
    if (options.expertBias)
      this.bias = new BiasController(this.buffer('e_score_correction_bias', new Float32Array(numExperts), [numExperts]), options.biasUpdateRate);
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  /** Selected experts, token-major [T*k], from sigmoid scores s (plus the bias) with group limiting. */
  select(s: Float32Array, T: number, withBias: boolean): Int32Array {
    const E = this.numExperts;
    let c = s;
    if (withBias && this.bias) {
      const b = this.bias.bias.dataSync();
      c = Float32Array.from(s, (v, i) => v + b[i % E]!);
    }
    const { groups, topkGroup } = this.options;
    if (groups > 1 && topkGroup < groups) c = limitGroups(c, T, E, groups, topkGroup, this.options.groupScore);
    return topkRows(c, T, E, this.options.k);
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const { k } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = editRouterLogits(ctx, this.path, tf.matMul(x, this.weight, false, true) as tf.Tensor2D);
    const scores = tf.sigmoid(logits) as tf.Tensor2D;
    const s = scores.dataSync() as Float32Array;
    const { plan, flat } = planFromChoices(this.select(s, T, true), T, k, E);
    let weight = gatherAt(scores, flat);
    if (this.options.normalize) weight = renormPerToken(weight, plan);
    if (this.options.scale !== 1) weight = tf.mul(weight, this.options.scale) as tf.Tensor1D;
    const probs = tf.div(scores, tf.sum(scores, 1, true)) as tf.Tensor2D; // normalised sigmoid over all experts
    this.bias?.record(plan, ctx);
    if (ctx.training && this.options.seqBalanceCoef > 0) {
      const { B, T: L } = sequenceLayout(T, info?.batchShape);
      const indicator = this.options.fromBiasedSelection || !this.bias ? plan : planFromChoices(topkRows(s, T, E, k), T, k, E).plan;
      ctx.aux.push({ name: 'seq_balance', layer: this.path, value: sequenceSwitchLoss(probs, indicator, B, L, k), coef: this.options.seqBalanceCoef });
    }
    if (ctx.training && this.options.zLossCoef > 0) ctx.aux.push({ name: 'z_loss', layer: this.path, value: zLoss(logits), coef: this.options.zLossCoef });
    return { plan, weight, probs, logits, extra: this.bias?.stats() };
  }

  override afterStep(): void {
    this.bias?.update();
  }
}

function check(c: { k: number; groups: number; topkGroup: number }, E: number, path: string): void {
  checkK(c.k, E, path);
  if (E % c.groups !== 0) throw new MoelabError(`${E} experts cannot be split into ${c.groups} equal groups`, `${path}.groups`);
  if (c.topkGroup > c.groups) throw new MoelabError(`topkGroup ${c.topkGroup} exceeds groups ${c.groups}`, `${path}.topkGroup`);
  if (c.groups > 1 && (c.topkGroup * E) / c.groups < c.k)
    throw new MoelabError(`topkGroup ${c.topkGroup} leaves ${(c.topkGroup * E) / c.groups} experts, fewer than k = ${c.k}`, `${path}.topkGroup`);
}

export const deepseekV3 = defineEntry({
  kind: 'router',
  name: 'deepseek-v3',
  description:
    'DeepSeek-V3 gate: sigmoid scores normalised over the selected × γ, aux-loss-free bias balancing (selection only), group-limited top-k, sequence-wise loss 1e-4.',
  reference: 'docs/routers.md#deepseek-v3; arXiv 2412.19437, 2408.15664',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 8, description: 'routed experts per token (V3: 8 of 256)' }),
    normalize: Type.Boolean({ default: true, description: 'g = s_e / Σ_selected s (norm_topk_prob)' }),
    scale: Type.Number({ exclusiveMinimum: 0, default: 2.5, description: 'routed scaling factor γ (V3: 2.5)' }),
    groups: Type.Integer({ minimum: 1, default: 1, description: 'n_group expert groups (V3: 8); 1 = no group limit' }),
    topkGroup: Type.Integer({ minimum: 1, default: 1, description: 'groups a token may use (V3: 4)' }),
    groupScore: Type.Union([Type.Literal('top2-sum'), Type.Literal('max')], {
      default: 'top2-sum',
      description: 'group score: sum of its top-2 biased scores (V3) or its max',
    }),
    expertBias: Type.Boolean({ default: true, description: 'aux-loss-free bias balancing' }),
    biasUpdateRate: Type.Number({ minimum: 0, default: 1e-3, description: 'u of the bias update (1e-3)' }),
    seqBalanceCoef: Type.Number({ minimum: 0, default: 1e-4, description: 'α of the complementary sequence-wise loss (V3: 1e-4)' }),
    fromBiasedSelection: Type.Boolean({
      default: false,
      description: 'sequence loss indicator from the biased routing (default: unbiased top-k, as the paper)',
    }),
    zLossCoef: Type.Number({ minimum: 0, default: 0, description: 'optional router z-loss' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    check(c, E, ctx.path);
    return new DeepSeekV3Router(ctx.need('dModel'), E, c, ctx.rng);
  },
});

export const topkSigmoidNormalised = defineEntry({
  kind: 'router',
  name: 'topk-sigmoid-normalised',
  description: 'Normalised sigmoid gating (Nguyen et al. 2025): top-k of σ(Wx), weights σ_e / Σ_selected σ; no bias, groups or scaling.',
  reference: 'docs/routers.md#topk-sigmoid-normalised; arXiv 2505.10860',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: kSchema(2),
    seqBalanceCoef: Type.Number({ minimum: 0, default: 0, description: 'optional sequence-wise balance loss on the normalised sigmoid' }),
    expertBias: Type.Boolean({ default: false, description: 'aux-loss-free bias balancing' }),
    biasUpdateRate: Type.Number({ minimum: 0, default: 1e-3 }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    if (c.k === 1) throw new MoelabError('k = 1 with normalised weights makes every gate 1 (no task gradient to the router)', `${ctx.path}.k`);
    return new DeepSeekV3Router(
      ctx.need('dModel'),
      E,
      { ...c, normalize: true, scale: 1, groups: 1, topkGroup: 1, groupScore: 'max', fromBiasedSelection: false, zLossCoef: 0 },
      ctx.rng,
    );
  },
});
