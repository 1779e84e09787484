/**
 * Dynamic top-p routing, Huang et al. 2024 "Harder Tasks Need More Experts" (arXiv 2403.07652;
 * docs/routers.md#top-p), and the shared selector of the threshold router (`threshold.ts`).
 *
 *   P = softmax(W x); sort descending; keep the shortest prefix whose cumulative sum EXCEEDS p
 *   (the released code keeps the first index where cumsum > p: expert i is kept iff the sum of the
 *   probabilities ranked before it is ≤ p; ties at exactly p keep one more expert). At least one expert,
 *   at most `maxExperts`. Weights = the raw P_e (no renormalisation).
 *
 * Aux (training): α·L_b + β·L_d. L_b = the canonical Switch loss over all selected assignments (k = mean
 * experts per token, so 1 = uniform), α = 1e-2; L_d = mean per-token entropy of P (minimised, so that few
 * experts suffice), β = 1e-4 [recalled coefficients]. Dropless by default; the experts-per-token min/max
 * are in the layer statistics.
 */
import {
  Config,
  defineEntry,
  editRouterLogits,
  type ForwardContext,
  meanEntropy,
  Module,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  Type,
  tf,
} from '@moelab/core';
import { Balancer, balanceFields } from './balance.js';
import { gatherAt, planFromChoices, topkRows } from './common.js';

/**
 * Cumulative-probability selection on rows of p [T, E] (each row sums to 1). `inclusive`: keep expert i
 * iff the mass ranked before it is ≤ threshold (top-p rule); otherwise iff it is < threshold (XMoE rule).
 * Returns token-major choices [T * maxExperts] with -1 padding.
 */
export function cumulativeSelect(p: ArrayLike<number>, T: number, E: number, threshold: number, maxExperts: number, inclusive: boolean): Int32Array {
  const sorted = topkRows(p, T, E, E);
  const out = new Int32Array(T * maxExperts).fill(-1);
  for (let t = 0; t < T; t++) {
    let before = 0;
    for (let s = 0; s < maxExperts; s++) {
      if (s > 0 && (inclusive ? before > threshold : before >= threshold)) break;
      const e = sorted[t * E + s]!;
      out[t * maxExperts + s] = e;
      before += p[t * E + e]!;
    }
  }
  return out;
}

export interface CumulativeOptions {
  threshold: number;
  maxExperts: number;
  inclusive: boolean;
  balanceCoef: number;
  balanceCounts: 'all' | 'first';
  entropyCoef: number;
  zLossCoef: number;
}

export class CumulativeRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: CumulativeOptions,
    rng: Rng,
  ) {
    super();
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
    this.balancer = new Balancer({
      balanceCoef: options.balanceCoef,
      zLossCoef: options.zLossCoef,
      balanceCounts: options.balanceCounts,
      balanceScope: 'batch',
      balanceParity: 'canonical',
    });
  }

  /** Nominal experts per token for parameter counts: the cap (the actual number is dynamic). */
  get expertsPerToken(): number {
    return this.options.maxExperts;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const T = x.shape[0];
    const E = this.numExperts;
    const { maxExperts } = this.options;
    const logits = editRouterLogits(ctx, this.path, tf.matMul(x, this.weight, false, true) as tf.Tensor2D);
    const probs = tf.softmax(logits) as tf.Tensor2D;
    const choices = cumulativeSelect(probs.dataSync(), T, E, this.options.threshold, maxExperts, this.options.inclusive);
    const { plan, flat } = planFromChoices(choices, T, maxExperts, E);
    const weight = gatherAt(probs, flat);
    this.balancer.push(ctx, this.path, probs, plan, this.options.balanceCounts === 'first' ? 1 : plan.size / Math.max(1, T), info, logits);
    if (ctx.training && this.options.entropyCoef > 0)
      ctx.aux.push({ name: 'dynamic_entropy', layer: this.path, value: meanEntropy(probs), coef: this.options.entropyCoef });
    return { plan, weight, probs, logits };
  }
}

export const topP = defineEntry({
  kind: 'router',
  name: 'top-p',
  description: 'Dynamic top-p routing (Huang et al. 2024): smallest set of experts whose softmax mass exceeds p, raw weights; balance + entropy losses.',
  reference: 'docs/routers.md#top-p; arXiv 2403.07652',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    p: Type.Number({ exclusiveMinimum: 0, exclusiveMaximum: 1, default: 0.4, description: 'cumulative probability threshold (released config: 0.4)' }),
    maxExperts: Type.Optional(Type.Integer({ minimum: 1, description: 'cap on experts per token (default: all E)' })),
    balanceCoef: balanceFields(0.01).balanceCoef,
    entropyCoef: Type.Number({ minimum: 0, default: 1e-4, description: 'β of the dynamic (per-token entropy) loss' }),
    zLossCoef: Type.Number({ minimum: 0, default: 0, description: 'router z-loss weight' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    const maxExperts = Math.min(c.maxExperts ?? E, E);
    return new CumulativeRouter(
      ctx.need('dModel'),
      E,
      { threshold: c.p, maxExperts, inclusive: true, balanceCoef: c.balanceCoef, balanceCounts: 'all', entropyCoef: c.entropyCoef, zLossCoef: c.zLossCoef },
      ctx.rng,
    );
  },
});
