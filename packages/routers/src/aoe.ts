/**
 * Autonomy-of-Experts (Lv et al. 2025, arXiv 2501.13074), docs/routers.md#aoe: no router; each expert scores itself by the
 * norm of its own low-rank gate activation. An `ffn` entry of its own (the router and the experts share
 * parameters, so the router/expert-bank split of the `moe` layer does not apply).
 *
 *   W_g^e = W_down^e W_up^e,  W_down^e [d, r]:   a_e = x W_down^e (all experts: one matmul x [d, E·r])
 *   n_e = ||a_e||₂;   p = softmax(n) over experts;   I = TopK_k(p);   weight = raw p_e (no renormalisation)
 *   selected experts continue from their cached a_e:  h = act(a_e W_up^e) ⊙ (x W_p^e),  y_e = h W_o^e
 *   out = Σ_{e∈I} p_e y_e
 *
 * Aux: the Switch loss on p (canonical, coef 1e-2). Dropless. `r` (d_low) and the paper's widths are
 * not known to us: r = 8 here. Parameter names: `w_down` [d, E·r], `w_up` [E, r, h],
 * `w_p` [E, d, h], `w_o` [E, h, d].
 */
import {
  ACTIVATIONS,
  type Activation,
  activate,
  Config,
  combine,
  DispatchPlan,
  defineEntry,
  distributionStats,
  type FeedForward,
  type ForwardContext,
  gatherPadded,
  Module,
  type Rng,
  type RoutingStats,
  Type,
  tf,
  ungatherPadded,
} from '@moelab/core';
import { Balancer, type BalanceOptions, balanceFields } from './balance.js';
import { checkK, gatherAt, kSchema, planFromChoices, topkRows } from './common.js';

export interface AoEOptions extends BalanceOptions {
  experts: number;
  k: number;
  rank: number;
  hidden: number;
  activation: Activation;
}

export class AutonomyOfExperts extends Module implements FeedForward {
  readonly wDown: tf.Variable;
  readonly wUp: tf.Variable;
  readonly wP: tf.Variable;
  readonly wO: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly options: AoEOptions,
    rng: Rng,
  ) {
    super();
    const { experts: E, rank: r, hidden: h } = options;
    const d = dModel;
    this.wDown = this.param('w_down', rng.normalArray(d * E * r, 1 / Math.sqrt(d)), [d, E * r]);
    this.wUp = this.param('w_up', rng.normalArray(E * r * h, 1 / Math.sqrt(r)), [E, r, h]);
    this.wP = this.param('w_p', rng.normalArray(E * d * h, 1 / Math.sqrt(d)), [E, d, h]);
    this.wO = this.param('w_o', rng.normalArray(E * h * d, 1 / Math.sqrt(h)), [E, h, d]);
    this.balancer = new Balancer(options);
  }

  /** Expert scores p = softmax(||x W_down^e||) [T, E] and the activations a [T, E, r]. */
  scores(x: tf.Tensor2D): { a: tf.Tensor3D; probs: tf.Tensor2D; norms: tf.Tensor2D } {
    const { experts: E, rank: r } = this.options;
    const a = tf.reshape(tf.matMul(x, this.wDown), [x.shape[0], E, r]) as tf.Tensor3D;
    const norms = tf.sqrt(tf.add(tf.sum(tf.square(a), 2), 1e-12)) as tf.Tensor2D;
    return { a, probs: tf.softmax(norms) as tf.Tensor2D, norms };
  }

  forward(input: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const shape = input.shape;
    const d = this.dModel;
    const x = tf.reshape(input, [-1, d]) as tf.Tensor2D;
    const T = x.shape[0];
    const { experts: E, k, rank: r } = this.options;
    const { a, probs } = this.scores(x);
    const { plan, flat } = planFromChoices(topkRows(probs.dataSync(), T, E, k), T, k, E);
    const weight = gatherAt(probs, flat);
    // Per-assignment rows: a_{t,e} [N, r] and x_t [N, d], laid out per expert (padded) for batched GEMMs.
    const aRows = tf.gather(tf.reshape(a, [T * E, r]), tf.tensor1d(flat, 'int32')) as tf.Tensor2D;
    const xRows = tf.gather(x, plan.tokenIndexTensor()) as tf.Tensor2D;
    const N = plan.size;
    const byAssignment = new DispatchPlan(
      Int32Array.from({ length: N }, (_, n) => n),
      plan.expertIndex,
      N,
      E,
    );
    const pa = gatherPadded(aRows, byAssignment);
    const px = gatherPadded(xRows, byAssignment);
    const h = tf.mul(activate(tf.matMul(pa.xs, this.wUp as tf.Tensor3D), this.options.activation), tf.matMul(px.xs, this.wP as tf.Tensor3D)) as tf.Tensor3D;
    const y = ungatherPadded(tf.matMul(h, this.wO as tf.Tensor3D) as tf.Tensor3D, pa.assignmentRow);
    const out = combine(y, weight, plan);
    this.balancer.push(ctx, this.path, probs, plan, k);
    const counts = Array.from(plan.counts);
    const stats: RoutingStats = {
      layer: this.path,
      numExperts: E,
      tokens: T,
      counts,
      load: counts.map((c) => c / Math.max(1, N)),
      dropRate: 0,
      expertsPerToken: k,
      intendedCounts: counts.slice(),
      ...distributionStats(probs),
    };
    if (ctx.stats !== false) ctx.routing.push(stats);
    return tf.reshape(out, shape);
  }

  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    const { experts: E, k, rank: r, hidden: h } = this.options;
    const d = this.dModel;
    return d * E * r + k * (r * h + 2 * d * h);
  }

  override macsPerToken(): number {
    return this.activeParameterCount();
  }
}

export const autonomyOfExperts = defineEntry({
  kind: 'ffn',
  name: 'aoe',
  description: 'Autonomy-of-Experts (Lv et al. 2025): experts select themselves by the norm of their low-rank gate activation; no router.',
  reference: 'docs/routers.md#aoe; arXiv 2501.13074',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 8, description: 'number of experts E' }),
    k: kSchema(2),
    rank: Type.Integer({ minimum: 1, default: 8, description: 'd_low: rank of the factorised gate projection (paper value UNKNOWN)' }),
    hidden: Type.Integer({ minimum: 1, default: 64, description: 'hidden width of each expert' }),
    activation: Type.Union(
      ACTIVATIONS.map((a) => Type.Literal(a)),
      { default: 'silu' },
    ),
    ...balanceFields(0.01),
  }),
  create: (c, ctx) => {
    checkK(c.k, c.experts, ctx.path);
    return new AutonomyOfExperts(ctx.need('dModel'), c, ctx.rng);
  },
});
