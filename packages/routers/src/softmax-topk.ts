/**
 * Softmax top-k router (Shazeer et al. 2017; Switch = k 1, GShard/Mixtral = k 2).
 *
 *   p = softmax(W x)                       W: [E, d]
 *   S = top-k(p)                           (optionally on noisy logits W x + eps * softplus(W_noise x))
 *   g_e = p_e / sum_{j in S} p_j  if renormalize else p_e,  for e in S
 *
 * Aux losses: Switch load balancing E * sum_e f_e P_e (coef `balanceCoef`) and router z-loss
 * mean(logsumexp(Wx)^2) (coef `zLossCoef`). Spec: specs/routers.md §3.1 (softmax top-k), §5 (losses).
 */
import { DispatchPlan, defineEntry, type ForwardContext, Module, type RouteResult, type Router, type Rng, switchBalanceLoss, Type, tf, zLoss, Config, MoelabError } from '@moelab/core';

export interface SoftmaxTopKOptions {
  k: number;
  renormalize: boolean;
  noisy: boolean;
  balanceCoef: number;
  zLossCoef: number;
}

export class SoftmaxTopKRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly noiseWeight?: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: SoftmaxTopKOptions,
    rng: Rng,
  ) {
    super();
    if (options.k > numExperts) throw new MoelabError(`k = ${options.k} exceeds the number of experts (${numExperts})`);
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
    if (options.noisy) this.noiseWeight = this.param('noise_weight', new Float32Array(numExperts * dModel), [numExperts, dModel]);
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext): RouteResult {
    const { k, renormalize } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = tf.matMul(x, this.weight, false, true) as tf.Tensor2D;
    let selectLogits = logits;
    if (this.noiseWeight && ctx.training) {
      // Noisy top-k gating (Shazeer et al. 2017, eq. 4): noise only affects training-time selection.
      const scale = tf.softplus(tf.matMul(x, this.noiseWeight, false, true));
      const eps = tf.tensor2d(ctx.rng.normalArray(T * E), [T, E]);
      selectLogits = tf.add(logits, tf.mul(eps, scale)) as tf.Tensor2D;
    }
    const probs = tf.softmax(selectLogits) as tf.Tensor2D;
    const top = tf.topk(selectLogits, k);
    const idx = top.indices.dataSync() as Int32Array;
    // Slot-major order: every token's first choice before any token's second (capacity priority).
    const tokenIndex = new Int32Array(T * k);
    const expertIndex = new Int32Array(T * k);
    const flatTokenMajor = new Int32Array(T * k);
    for (let t = 0; t < T; t++)
      for (let s = 0; s < k; s++) {
        const e = idx[t * k + s]!;
        tokenIndex[s * T + t] = t;
        expertIndex[s * T + t] = e;
        flatTokenMajor[t * k + s] = t * E + e;
      }
    let gates = tf.reshape(tf.gather(tf.reshape(probs, [-1]), tf.tensor1d(flatTokenMajor, 'int32')), [T, k]);
    if (renormalize) gates = tf.div(gates, tf.sum(gates, 1, true));
    const weight = tf.reshape(tf.transpose(gates), [T * k]) as tf.Tensor1D;
    const plan = new DispatchPlan(tokenIndex, expertIndex, T, E);
    if (ctx.training) {
      if (this.options.balanceCoef > 0) ctx.aux.push({ name: 'switch_balance', layer: this.path, value: switchBalanceLoss(probs, plan), coef: this.options.balanceCoef });
      if (this.options.zLossCoef > 0) ctx.aux.push({ name: 'z_loss', layer: this.path, value: zLoss(logits), coef: this.options.zLossCoef });
    }
    return { plan, weight, probs };
  }
}

export const softmaxTopK = defineEntry({
  kind: 'router',
  name: 'softmax-topk',
  description: 'Softmax gate, top-k selection (Switch k=1, GShard/Mixtral k=2), optional renormalisation and noise; Switch balance loss + z-loss.',
  reference: 'specs/routers.md §3.1',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 2, description: 'experts per token' }),
    renormalize: Type.Boolean({ default: true, description: 'renormalise the k selected probabilities to sum to 1' }),
    noisy: Type.Boolean({ default: false, description: 'noisy top-k gating (trainable noise scale)' }),
    balanceCoef: Type.Number({ minimum: 0, default: 0.01, description: 'Switch load-balancing loss weight' }),
    zLossCoef: Type.Number({ minimum: 0, default: 0.001, description: 'router z-loss weight' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    if (c.k > E) throw new MoelabError(`k = ${c.k} exceeds the number of experts (${E})`, `${ctx.path}.k`);
    return new SoftmaxTopKRouter(ctx.need('dModel'), E, c, ctx.rng);
  },
});
