/**
 * GShard top-2 with its second-expert rule (Lepikhin et al. 2020; mesh-TF `_top_2_gating`), and the
 * ST-MoE recipe built on it (arXiv 2006.16668, 2202.08906). docs/routers.md#gshard-top2, docs/routers.md#st-moe.
 *
 *   p = softmax(W x);  e1 = argmax p;  e2 = argmax of p without e1
 *   g1, g2 = p_e1 / (p_e1 + p_e2), p_e2 / (p_e1 + p_e2)          (renormalised over the pair)
 *   second expert kept per policy:  all | none | threshold (g2 > θ) | random (U(0,1) < g2 / θ)
 *                                   | sampling (DeepSpeed: e2 by Gumbel-max on the logits, always kept)
 *
 * Defaults: mesh-TF (`random`, θ = 0.2: e2 kept with probability min(1, 5·g2)), in training and eval
 * (separate options). When e2 is not kept, g1 stays g1/(g1+g2) (no renormalisation after a drop).
 * Aux: first-choice-only Switch loss E·Σ f1·P (coef 1e-2); ST-MoE adds z-loss 1e-3. Capacity is the MoE
 * layer's option (ST-MoE: capacityFactor 1.25, evalCapacityFactor 2.0, minCapacity 4).
 */
import { Config, defineEntry, type ForwardContext, Module, MoelabError, type RouteInfo, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { Balancer, balanceFields } from './balance.js';
import { gatherAt, jitter, planFromChoices, topkRows } from './common.js';

export type SecondPolicy = 'all' | 'none' | 'threshold' | 'random' | 'sampling';

export interface GShardOptions {
  policyTrain: SecondPolicy;
  policyEval: SecondPolicy;
  threshold: number;
  jitterEps: number;
  balanceCoef: number;
  zLossCoef: number;
}

export class GShardTop2Router extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: GShardOptions,
    rng: Rng,
  ) {
    super();
    if (numExperts < 2) throw new MoelabError(`top-2 routing needs at least 2 experts (got ${numExperts})`);
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
    this.balancer = new Balancer({
      balanceCoef: options.balanceCoef,
      zLossCoef: options.zLossCoef,
      balanceCounts: 'first',
      balanceScope: 'batch',
      balanceParity: 'canonical',
    });
  }

  get expertsPerToken(): number {
    return 2;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = tf.matMul(jitter(x, this.options.jitterEps, ctx), this.weight, false, true) as tf.Tensor2D;
    const probs = tf.softmax(logits) as tf.Tensor2D;
    const p = probs.dataSync();
    const policy = ctx.training ? this.options.policyTrain : this.options.policyEval;
    const top = topkRows(p, T, E, 2);
    const choices = new Int32Array(T * 2);
    if (policy === 'sampling') {
      // DeepSpeed top2_2nd_expert_sampling: e2 = argmax over e != e1 of (z_e + Gumbel noise).
      const z = logits.dataSync();
      for (let t = 0; t < T; t++) {
        const e1 = top[t * 2]!;
        let best = -1;
        let bv = Number.NEGATIVE_INFINITY;
        for (let e = 0; e < E; e++) {
          if (e === e1) continue;
          let u = ctx.rng.next();
          while (u === 0) u = ctx.rng.next();
          const v = z[t * E + e]! - Math.log(-Math.log(u));
          if (v > bv) {
            bv = v;
            best = e;
          }
        }
        choices[t * 2] = e1;
        choices[t * 2 + 1] = best;
      }
    } else choices.set(top);
    // Pair-renormalised gates of the chosen two (before any second-expert drop).
    const pair = planFromChoices(choices, T, 2, E);
    const raw = gatherAt(probs, pair.flat);
    const tok = pair.plan.tokenIndexTensor();
    const gates = tf.div(raw, tf.gather(tf.unsortedSegmentSum(raw, tok, T), tok)) as tf.Tensor1D;
    // Which second choices survive the policy (the plan is slot-major: rows T.. are the second choices).
    const g = gates.dataSync();
    const keep = new Uint8Array(2 * T).fill(1);
    for (let t = 0; t < T; t++) {
      const g2 = g[T + t]!;
      let kept = true;
      if (policy === 'none') kept = false;
      else if (policy === 'threshold') kept = g2 > this.options.threshold;
      else if (policy === 'random') kept = ctx.rng.next() < g2 / this.options.threshold;
      keep[T + t] = kept ? 1 : 0;
    }
    const { plan, kept } = pair.plan.filter(keep);
    const weight = tf.gather(gates, tf.tensor1d(kept, 'int32')) as tf.Tensor1D;
    // Balance loss from the first choices (the routing decision before capacity).
    this.balancer.push(ctx, this.path, probs, pair.plan, 1, info, logits);
    return { plan, weight, probs, logits, extra: { secondKeptRate: T > 0 ? (plan.size - T) / T : 0 } };
  }
}

const policy = (dflt: SecondPolicy, what: string) =>
  Type.Union(
    (['all', 'none', 'threshold', 'random', 'sampling'] as const).map((p) => Type.Literal(p)),
    {
      default: dflt,
      description: `second-expert policy in ${what}: all, none, threshold (g2 > θ), random (U < g2/θ; mesh-TF), sampling (DeepSpeed Gumbel, always kept)`,
    },
  );

const gshardSchema = (zLoss: number) => ({
  policyTrain: policy('random', 'training'),
  policyEval: policy('random', 'eval'),
  threshold: Type.Number({
    exclusiveMinimum: 0,
    default: 0.2,
    description: 'θ of the threshold / random policies (mesh-TF 0.2; GShard paper Algorithm 1 ≈ 0.5)',
  }),
  jitterEps: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0, description: 'multiplicative input jitter' }),
  balanceCoef: balanceFields(0.01).balanceCoef,
  zLossCoef: Type.Number({ minimum: 0, default: zLoss, description: 'router z-loss weight' }),
});

export const gshardTop2 = defineEntry({
  kind: 'router',
  name: 'gshard-top2',
  description: 'GShard top-2: pair-renormalised gates, second expert kept at random with prob min(1, g2/0.2) (mesh-TF), first-choice balance loss.',
  reference: 'docs/routers.md#gshard-top2; arXiv 2006.16668',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config(gshardSchema(0)),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    if (E < 2) throw new MoelabError(`top-2 routing needs at least 2 experts (got ${E})`, ctx.path);
    return new GShardTop2Router(ctx.need('dModel'), E, c, ctx.rng);
  },
});

/** ST-MoE recipe: GShard top-2 (random, θ 0.2) + Switch loss 1e-2 + z-loss 1e-3; capacity 1.25/2.0 on the layer. */
export const stMoE = defineEntry({
  kind: 'router',
  name: 'st-moe',
  description: 'ST-MoE router recipe: GShard top-2 (random second expert, θ = 0.2), balance loss 1e-2 + z-loss 1e-3.',
  reference: 'docs/routers.md#st-moe; arXiv 2202.08906',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config(gshardSchema(1e-3)),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    if (E < 2) throw new MoelabError(`top-2 routing needs at least 2 experts (got ${E})`, ctx.path);
    return new GShardTop2Router(ctx.need('dModel'), E, c, ctx.rng);
  },
});
