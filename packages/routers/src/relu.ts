/**
 * ReLU routing with an adaptive, load-balanced L1 regulariser: ReMoE (Wang, Chen, Zhu 2024),
 * docs/routers.md#relu (arXiv 2412.14711).
 *
 *   R = ReLU(W x)                  [N, E];  expert e is active for token t iff R_t,e > 0;  weight = R_t,e
 *   L_reg = λ · E / (K·N²) · Σ_e (Σ_t R_t,e)(Σ_t [R_t,e > 0])      (pushed unscaled with coef λ)
 *   after every optimiser step:  S = fraction of zero entries of R over the step's training calls;
 *                                λ ← λ·α if S < S* = 1 − K/E else λ / α       (λ0 = 1e-8, α = 1.2)
 *
 * Selection is exact (ReLU is differentiable a.e.): no straight-through trick. A token may get zero
 * experts. The official controller averages S over all layers and updates one global λ; here each layer
 * has its own λ from its own sparsity (same target; a documented choice).
 */
import { Config, defineEntry, type ForwardContext, Module, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { checkK, gatherAt, planFromChoices } from './common.js';

export interface ReLURouterOptions {
  k: number;
  lambda0: number;
  alpha: number;
}

export class ReLURouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  /** Current L1 coefficient λ. */
  lambda: number;
  private zeros = 0;
  private entries = 0;
  lastSparsity = Number.NaN;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: ReLURouterOptions,
    rng: Rng,
  ) {
    super();
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
    this.lambda = options.lambda0;
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  /** Target sparsity S* = 1 − K/E. */
  get targetSparsity(): number {
    return 1 - this.options.k / this.numExperts;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext): RouteResult {
    const N = x.shape[0];
    const E = this.numExperts;
    const logits = tf.matMul(x, this.weight, false, true) as tf.Tensor2D;
    const R = tf.relu(logits) as tf.Tensor2D;
    const r = R.dataSync();
    const choices = new Int32Array(N * E).fill(-1);
    const active = new Float32Array(E);
    let zeros = 0;
    for (let t = 0; t < N; t++) {
      let s = 0;
      for (let e = 0; e < E; e++)
        if (r[t * E + e]! > 0) {
          choices[t * E + s++] = e;
          active[e]!++;
        } else zeros++;
    }
    const { plan, flat } = planFromChoices(choices, N, E, E);
    const weight = gatherAt(R, flat);
    if (ctx.training) {
      this.zeros += zeros;
      this.entries += N * E;
      const value = tf.mul(E / (this.options.k * N * N), tf.sum(tf.mul(tf.sum(R, 0), tf.tensor1d(active)))) as tf.Scalar;
      ctx.aux.push({ name: 'relu_l1', layer: this.path, value, coef: this.lambda });
    }
    return { plan, weight, probs: R, logits, extra: { lambda: this.lambda, sparsity: zeros / Math.max(1, N * E) } };
  }

  /** One controller update from the sparsity measured since the last one (no-op if nothing was recorded). */
  override afterStep(): void {
    if (this.entries === 0) return;
    const S = this.zeros / this.entries;
    this.lastSparsity = S;
    this.lambda = S < this.targetSparsity ? this.lambda * this.options.alpha : this.lambda / this.options.alpha;
    this.zeros = 0;
    this.entries = 0;
  }
}

export const reluRouter = defineEntry({
  kind: 'router',
  name: 'relu',
  description: 'ReLU routing (ReMoE): weights = ReLU(Wx), experts active where > 0; load-balanced L1 with λ steered to sparsity 1 − K/E.',
  reference: 'docs/routers.md#relu; arXiv 2412.14711',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 2, description: 'target active experts per token K (sets the sparsity target 1 − K/E)' }),
    lambda0: Type.Number({ minimum: 0, default: 1e-8, description: 'initial L1 coefficient λ0 (ReMoE: 1e-8)' }),
    alpha: Type.Number({ exclusiveMinimum: 1, default: 1.2, description: 'multiplicative λ step α (ReMoE: 1.2)' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    return new ReLURouter(ctx.need('dModel'), E, c, ctx.rng);
  },
});
