/**
 * Cosine top-k router (Tutel `cosine_top`, X-MoE style), docs/routers.md#cosine-topk.
 *
 *   z_e = exp(min(θ, log 100)) · cos(P x, w_e)      P: learned projection d -> projDim (Tutel 256),
 *                                                   θ learned, init log(1 / 0.5) (init_t = 0.5)
 *   p = softmax(z);  S = top-k(p);  g = p_e / Σ_{j∈S} p_j (Tutel normalize_gate) or raw
 *
 * The logit scale is bounded by 100, so logits cannot grow without bound (no z-loss needed).
 * Aux: canonical Switch loss (coef 1e-2).
 */
import { Config, defineEntry, type ForwardContext, Module, MoelabError, type RouteInfo, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { Balancer, type BalanceOptions, balanceFields } from './balance.js';
import { checkK, gatherAt, kSchema, planFromChoices, renormPerToken, topkRows } from './common.js';

export interface CosineOptions extends BalanceOptions {
  k: number;
  projDim: number;
  initTemperature: number;
  renormalize: boolean;
}

const l2rows = (x: tf.Tensor) => tf.div(x, tf.sqrt(tf.add(tf.sum(tf.square(x), -1, true), 1e-12)));

export class CosineRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly proj: tf.Variable;
  readonly sim: tf.Variable;
  readonly temperature: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: CosineOptions,
    rng: Rng,
  ) {
    super();
    const P = options.projDim;
    this.proj = this.param('cosine_projector.weight', rng.normalArray(P * dModel, 1 / Math.sqrt(dModel)), [P, dModel]);
    this.sim = this.param('sim_matrix', rng.normalArray(P * numExperts, 0.01), [P, numExperts]);
    this.temperature = this.param('temperature', new Float32Array([Math.log(1 / options.initTemperature)]), [1]);
    this.balancer = new Balancer(options);
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  logits(x: tf.Tensor2D): tf.Tensor2D {
    const h = l2rows(tf.matMul(x, this.proj, false, true));
    const w = tf.transpose(l2rows(tf.transpose(this.sim)));
    const scale = tf.exp(tf.minimum(this.temperature, Math.log(100)));
    return tf.mul(tf.matMul(h, w), scale) as tf.Tensor2D;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const { k } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = this.logits(x);
    const probs = tf.softmax(logits) as tf.Tensor2D;
    const { plan, flat } = planFromChoices(topkRows(probs.dataSync(), T, E, k), T, k, E);
    let weight = gatherAt(probs, flat);
    if (this.options.renormalize) weight = renormPerToken(weight, plan);
    this.balancer.push(ctx, this.path, probs, plan, k, info, logits);
    return { plan, weight, probs, logits };
  }

  override afterStep(): void {
    this.balancer.resetGlobal();
  }
}

export const cosineTopK = defineEntry({
  kind: 'router',
  name: 'cosine-topk',
  description: 'Cosine router (Tutel cosine_top): scaled cosine between a learned projection of x and expert embeddings (scale ≤ 100), top-k.',
  reference: 'docs/routers.md#cosine-topk; arXiv 2206.03382',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: kSchema(2),
    projDim: Type.Integer({ minimum: 1, default: 256, description: 'projection width (Tutel: 256)' }),
    initTemperature: Type.Number({ exclusiveMinimum: 0, default: 0.5, description: 'initial temperature (Tutel init_t 0.5: logit scale 2)' }),
    renormalize: Type.Boolean({ default: true, description: 'renormalise the selected probabilities (Tutel normalize_gate)' }),
    ...balanceFields(0.01),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    if (c.k === 1 && c.renormalize)
      throw new MoelabError('k = 1 with renormalize makes every gate 1 (no task gradient to the router); set renormalize: false', `${ctx.path}.renormalize`);
    return new CosineRouter(ctx.need('dModel'), E, c, ctx.rng);
  },
});
