/**
 * MoEfication's MLP expert selection (Zhang et al., arXiv 2110.01786; official code thunlp/MoEfication),
 * docs/routers.md#moefication-mlp. The experts are groups of a dense FFN's neurons; the router predicts
 * which groups a token activates most and those are computed exactly as in the dense FFN (weight 1):
 *
 *   x̂ = x / ‖x‖;   r = W_b tanh(W_a x̂)        W_a = wa [E, d],  W_b = wb [E, E]
 *   S = TopK(r, k);   y = Σ_{e∈S} f_e(x)       (no gate multiplication)
 *
 * Init: W_b = I and W_a ~ N(0, 1/d) until an upcycler writes the experts' centres (the mean of each group's
 * L2-normalised first-layer weight rows), which makes r a similarity of the token to each group. With
 * k = E every neuron is computed and the layer equals the dense FFN. The weights are 1, so the task loss
 * gives the router no gradient: the paper fits it separately to the groups' true activation scores.
 */
import { Config, defineEntry, type ForwardContext, Module, MoelabError, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { checkK, planFromChoices, topkRows } from './common.js';

export class MoEficationRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly wa: tf.Variable;
  readonly wb: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly k: number,
    rng: Rng,
  ) {
    super();
    if (k > numExperts) throw new MoelabError(`k = ${k} exceeds the number of experts (${numExperts})`);
    const E = numExperts;
    this.wa = this.param('wa', rng.normalArray(E * dModel, 1 / Math.sqrt(dModel)), [E, dModel]);
    this.wb = this.param(
      'wb',
      Float32Array.from({ length: E * E }, (_, i) => (i % (E + 1) === 0 ? 1 : 0)),
      [E, E],
    );
  }

  get expertsPerToken(): number {
    return this.k;
  }

  route(x: tf.Tensor2D, _ctx: ForwardContext): RouteResult {
    const T = x.shape[0];
    const E = this.numExperts;
    const scores = tf.tidy(() => {
      const xn = tf.div(x, tf.add(tf.norm(x, 'euclidean', 1, true), 1e-6));
      return tf.matMul(tf.tanh(tf.matMul(xn, this.wa, false, true)), this.wb, false, true) as tf.Tensor2D;
    });
    const choices = topkRows(scores.dataSync(), T, E, this.k);
    const { plan } = planFromChoices(choices, T, this.k, E);
    return { plan, weight: null, logits: scores };
  }
}

export const moeficationMlp = defineEntry({
  kind: 'router',
  name: 'moefication-mlp',
  description: "MoEfication's expert selection: r = W_b tanh(W_a x/‖x‖), top-k groups of neurons computed with weight 1.",
  reference: 'docs/routers.md#moefication-mlp; arXiv 2110.01786',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({ k: Type.Integer({ minimum: 1, default: 2, description: 'groups (experts) computed per token' }) }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    return new MoEficationRouter(ctx.need('dModel'), E, c.k, ctx.rng);
  },
});
