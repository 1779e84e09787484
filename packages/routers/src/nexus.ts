/**
 * Nexus's adaptive router (Gritsch et al., arXiv 2408.15901 §3; no official code), docs/routers.md#nexus-projection.
 * Each routed expert i has a frozen domain embedding d_i ∈ R^m (the mean embedding of its training data);
 * a small projection maps it into the model space, and tokens are routed by their dot product with it:
 *
 *   e_i = SwiGLU(d_i W1) W2 ∈ R^d      W1 = proj1 [m, 2·h_p],  SwiGLU(u) = silu(u_a) ⊙ u_b,  W2 = proj2 [h_p, d]
 *   s = softmax(x · e_1, …, x · e_n)    i* = argmax_i s_i      weight = s_{i*}   (top-1, raw)
 *
 * D = `domain_embeddings` [n, m] is a buffer (saved with the weights, never trained); W1 and W2 learn
 * through E = P(D). Because the router's parameters do not depend on n, an expert trained later is added
 * by appending its domain embedding (the `nexus-extend` upcycler) — no new router parameters.
 * Init: W1 ~ N(0, 1/m), W2 ~ N(0, 0.02²) (near-uniform routing at the start), D ~ N(0, 1/m) until an
 * upcycler writes the real embeddings. Balance: the Switch loss, coefficient 0.05 (the paper's).
 */
import { Config, defineEntry, type ForwardContext, Module, MoelabError, type RouteInfo, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { Balancer } from './balance.js';
import { checkK, gatherAt, planFromChoices, renormPerToken, topkRows } from './common.js';

export interface NexusRouterOptions {
  k: number;
  /** m: length of a domain embedding. */
  embeddingDim: number;
  /** h_p: hidden width of the projection. */
  hidden: number;
  renormalize: boolean;
  balanceCoef: number;
  zLossCoef: number;
}

export class NexusRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly domainEmbeddings: tf.Variable;
  readonly proj1: tf.Variable;
  readonly proj2: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: NexusRouterOptions,
    rng: Rng,
  ) {
    super();
    const { embeddingDim: m, hidden: h } = options;
    if (options.k > numExperts) throw new MoelabError(`k = ${options.k} exceeds the number of experts (${numExperts})`);
    this.domainEmbeddings = this.buffer('domain_embeddings', rng.normalArray(numExperts * m, 1 / Math.sqrt(m)), [numExperts, m]);
    this.proj1 = this.param('proj1', rng.normalArray(m * 2 * h, 1 / Math.sqrt(m)), [m, 2 * h]);
    this.proj2 = this.param('proj2', rng.normalArray(h * dModel, 0.02), [h, dModel]);
    this.balancer = new Balancer({
      balanceCoef: options.balanceCoef,
      zLossCoef: options.zLossCoef,
      balanceCounts: 'all',
      balanceScope: 'batch',
      balanceParity: 'canonical',
    });
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  /** E = SwiGLU(D W1) W2 [n, d]: the experts' embeddings in model space (independent of the input). */
  expertEmbeddings(): tf.Tensor2D {
    return tf.tidy(() => {
      const h = this.options.hidden;
      const u = tf.matMul(this.domainEmbeddings, this.proj1);
      const a = tf.slice(u, [0, 0], [-1, h]);
      const b = tf.slice(u, [0, h], [-1, h]);
      return tf.matMul(tf.mul(tf.mul(a, tf.sigmoid(a)), b), this.proj2) as tf.Tensor2D;
    });
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const { k, renormalize } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = tf.matMul(x, this.expertEmbeddings(), false, true) as tf.Tensor2D;
    const probs = tf.softmax(logits) as tf.Tensor2D;
    const choices = topkRows(logits.dataSync(), T, E, k);
    const { plan, flat } = planFromChoices(choices, T, k, E);
    let weight = gatherAt(probs, flat);
    if (renormalize) weight = renormPerToken(weight, plan);
    this.balancer.push(ctx, this.path, probs, plan, k, info, logits);
    return { plan, weight, probs, logits };
  }

  /** Router FLOPs per token: the token's dot products with the n expert embeddings (E itself is computed once per call). */
  override macsPerToken(_seqLen: number): number {
    return this.numExperts * this.dModel;
  }

  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    return this.proj1.size + this.proj2.size;
  }
}

export const nexusProjection = defineEntry({
  kind: 'router',
  name: 'nexus-projection',
  description: "Nexus's adaptive router: experts' frozen domain embeddings projected by a trainable SwiGLU MLP; top-1 on x·P(d_i), raw weight.",
  reference: 'docs/routers.md#nexus-projection; arXiv 2408.15901',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 1, description: 'experts per token (Nexus: 1)' }),
    embeddingDim: Type.Optional(Type.Integer({ minimum: 1, description: 'm: length of the domain embeddings (default dModel)' })),
    hidden: Type.Optional(Type.Integer({ minimum: 1, description: 'h_p: hidden width of the projection (default dModel)' })),
    renormalize: Type.Boolean({ default: false, description: 'renormalise the k selected probabilities (Nexus: raw weight; refused with k = 1)' }),
    balanceCoef: Type.Number({ minimum: 0, default: 0.05, description: 'Switch load-balancing loss weight (Nexus: 0.05)' }),
    zLossCoef: Type.Number({ minimum: 0, default: 0, description: 'router z-loss weight (Nexus: none)' }),
    domainCentre: Type.Optional(
      Type.Array(Type.Number(), {
        description:
          'the mean of the initial raw domain embeddings, subtracted before they entered D (centred embeddings); metadata for adding a domain later, not used by the forward pass',
      }),
    ),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    const d = ctx.need('dModel');
    if (c.domainCentre && c.domainCentre.length !== (c.embeddingDim ?? d))
      throw new MoelabError(`domainCentre has ${c.domainCentre.length} entries, the domain embeddings ${c.embeddingDim ?? d}`, `${ctx.path}.domainCentre`);
    checkK(c.k, E, ctx.path);
    if (c.k === 1 && c.renormalize)
      throw new MoelabError('k = 1 with renormalize: true makes every gate 1 and the router gets no task gradient', `${ctx.path}.renormalize`);
    return new NexusRouter(
      d,
      E,
      { k: c.k, embeddingDim: c.embeddingDim ?? d, hidden: c.hidden ?? d, renormalize: c.renormalize, balanceCoef: c.balanceCoef, zLossCoef: c.zLossCoef },
      ctx.rng,
    );
  },
});
