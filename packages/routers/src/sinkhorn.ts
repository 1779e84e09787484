/**
 * Sinkhorn router (Megatron-LM `sinkhorn` load balancing, BASE-layers-like balanced assignment),
 * docs/routers.md#sinkhorn.
 *
 *   training: A = sinkhorn(exp(z)) over the batch (rows and columns rescaled until the column scalings
 *             change by < tol on average: a near doubly-stochastic matrix), S = top-k rows of A
 *   eval:     S = top-k(z)
 *   weights:  σ(z_e) for k = 1, softmax(z)_e for k > 1 (raw), as Megatron
 *
 * No aux loss (Megatron forbids combining it with one). Selection in training depends on the whole batch,
 * including later tokens: flagged batch-dependent and not causal-safe.
 */
import { Config, defineEntry, type ForwardContext, Module, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { checkK, gatherAt, planFromChoices, topkRows } from './common.js';

/** Megatron's sinkhorn on a [T, E] cost (logits): returns d1 · exp(cost) · d0 (float64 arithmetic). */
export function sinkhorn(z: ArrayLike<number>, T: number, E: number, tol = 1e-4, maxIter = 1000): Float64Array {
  const c = new Float64Array(T * E);
  let m = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < T * E; i++) m = Math.max(m, z[i]!);
  for (let i = 0; i < T * E; i++) c[i] = Math.exp(z[i]! - m); // a global shift does not change the result
  const d0 = new Float64Array(T).fill(1);
  let d1 = new Float64Array(E).fill(1);
  const eps = 1e-8;
  for (let it = 0; it < maxIter; it++) {
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let e = 0; e < E; e++) s += d1[e]! * c[t * E + e]!;
      d0[t] = 1 / T / (s + eps);
    }
    const next = new Float64Array(E);
    for (let e = 0; e < E; e++) {
      let s = 0;
      for (let t = 0; t < T; t++) s += d0[t]! * c[t * E + e]!;
      next[e] = 1 / E / (s + eps);
    }
    let err = 0;
    for (let e = 0; e < E; e++) err += Math.abs(next[e]! - d1[e]!);
    d1 = next;
    if (err / E <= tol) break;
  }
  const out = new Float64Array(T * E);
  for (let t = 0; t < T; t++) for (let e = 0; e < E; e++) out[t * E + e] = d1[e]! * c[t * E + e]! * d0[t]!;
  return out;
}

export class SinkhornRouter extends Module implements Router {
  readonly flags = { causalSafe: false, batchDependent: true };
  readonly weight: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly k: number,
    rng: Rng,
  ) {
    super();
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
  }

  get expertsPerToken(): number {
    return this.k;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext): RouteResult {
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = tf.matMul(x, this.weight, false, true) as tf.Tensor2D;
    const z = logits.dataSync();
    const sel = ctx.training ? sinkhorn(z, T, E) : z;
    const { plan, flat } = planFromChoices(topkRows(sel, T, E, this.k), T, this.k, E);
    const scores = (this.k === 1 ? tf.sigmoid(logits) : tf.softmax(logits)) as tf.Tensor2D;
    return { plan, weight: gatherAt(scores, flat), probs: tf.softmax(logits) as tf.Tensor2D, logits };
  }
}

export const sinkhornRouter = defineEntry({
  kind: 'router',
  name: 'sinkhorn',
  description: 'Sinkhorn router (Megatron): balanced assignment from Sinkhorn-normalised exp(logits) in training, plain top-k in eval; no aux loss.',
  reference: 'docs/routers.md#sinkhorn; arXiv 2103.16716',
  flags: { causalSafe: false, batchDependent: true },
  schema: Config({ k: Type.Integer({ minimum: 1, default: 1, description: 'experts per token (weights: sigmoid for k = 1, softmax for k > 1)' }) }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    return new SinkhornRouter(ctx.need('dModel'), E, c.k, ctx.rng);
  },
});
