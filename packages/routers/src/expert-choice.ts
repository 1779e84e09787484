/**
 * Expert choice routing, Zhou et al. 2022 (arXiv 2202.09368; docs/routers.md#expert-choice): experts choose tokens.
 *
 *   S = softmax(X W^T) over experts          [n, E] for a group of n tokens
 *   C = min(n, ceil(n·c / E))                 capacity per expert (c = capacity factor, paper "EC-CF2": 2)
 *   G[e,:], I[e,:] = top-C over tokens of S[:, e]
 *   y_i = Σ_e Σ_l G[e,l]·[I[e,l] = i]·E_e(x_i)
 *
 * Every expert gets exactly C tokens (perfect balance, no aux loss); a token may get 0..E experts.
 * Options: `group: 'batch' | 'sequence'` (the token group), `softmaxAxis: 'experts'` (paper, flaxformer)
 * or `'tokens'` (mesh-TF `_expert_selection_gating`), `normalizeByExpertsPerToken` (mesh-TF option:
 * divide a token's weights by the number of experts it received).
 * NOT causal and batch-dependent: a token's experts depend on the other tokens of its group, so the
 * `moe` layer refuses it in a causal LM; use it in encoders / non-autoregressive experiments.
 */
import {
  Config,
  defineEntry,
  DispatchPlan,
  type ForwardContext,
  Module,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  Type,
  tf,
} from '@moelab/core';
import { sequenceLayout, topkRows } from './common.js';

export interface ExpertChoiceOptions {
  capacityFactor: number;
  group: 'batch' | 'sequence';
  softmaxAxis: 'experts' | 'tokens';
  normalizeByExpertsPerToken: boolean;
}

export class ExpertChoiceRouter extends Module implements Router {
  readonly flags = { causalSafe: false, batchDependent: true };
  readonly weight: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: ExpertChoiceOptions,
    rng: Rng,
  ) {
    super();
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
  }

  get expertsPerToken(): number {
    return this.options.capacityFactor;
  }

  /** Tokens per expert for a group of n tokens. */
  capacity(n: number): number {
    return Math.min(n, Math.max(1, Math.ceil((n * this.options.capacityFactor) / this.numExperts)));
  }

  route(x: tf.Tensor2D, _ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const N = x.shape[0];
    const E = this.numExperts;
    const logits = tf.matMul(x, this.weight, false, true) as tf.Tensor2D;
    const { B, T } = this.options.group === 'sequence' ? sequenceLayout(N, info?.batchShape) : { B: 1, T: N };
    let scores: tf.Tensor2D;
    if (this.options.softmaxAxis === 'experts') scores = tf.softmax(logits) as tf.Tensor2D;
    else scores = tf.reshape(tf.transpose(tf.softmax(tf.transpose(tf.reshape(logits, [B, T, E]), [0, 2, 1])), [0, 2, 1]), [N, E]) as tf.Tensor2D;
    const C = this.capacity(T);
    // top-C tokens per (group, expert): transpose the scores to [B*E, T] rows and select per row
    const s = scores.dataSync();
    const rows = new Float32Array(B * E * T);
    for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let e = 0; e < E; e++) rows[(b * E + e) * T + t] = s[(b * T + t) * E + e]!;
    const chosen = topkRows(rows, B * E, T, C);
    const tok = new Int32Array(B * E * C);
    const ex = new Int32Array(B * E * C);
    for (let b = 0; b < B; b++)
      for (let e = 0; e < E; e++)
        for (let l = 0; l < C; l++) {
          const n = (b * E + e) * C + l;
          tok[n] = b * T + chosen[(b * E + e) * C + l]!;
          ex[n] = e;
        }
    const plan = new DispatchPlan(tok, ex, N, E);
    const flat = Int32Array.from(tok, (t, n) => t * E + ex[n]!);
    let weight = tf.gather(tf.reshape(scores, [-1]), tf.tensor1d(flat, 'int32')) as tf.Tensor1D;
    if (this.options.normalizeByExpertsPerToken) {
      const per = new Float32Array(N);
      for (const t of tok) per[t]!++;
      weight = tf.div(weight, tf.tensor1d(Float32Array.from(tok, (t) => per[t]!))) as tf.Tensor1D;
    }
    return { plan, weight, probs: tf.softmax(logits) as tf.Tensor2D, logits, extra: { capacity: C } };
  }
}

export const expertChoice = defineEntry({
  kind: 'router',
  name: 'expert-choice',
  description: 'Expert choice (Zhou et al. 2022): each expert takes its top-C tokens, C = ceil(n·c/E); perfectly balanced, not causal.',
  reference: 'docs/routers.md#expert-choice; arXiv 2202.09368',
  flags: { causalSafe: false, batchDependent: true },
  schema: Config({
    capacityFactor: Type.Number({ exclusiveMinimum: 0, default: 2, description: 'c: average experts per token (paper EC-CF2: 2)' }),
    group: Type.Union([Type.Literal('batch'), Type.Literal('sequence')], { default: 'batch', description: 'token group the experts choose from' }),
    softmaxAxis: Type.Union([Type.Literal('experts'), Type.Literal('tokens')], {
      default: 'experts',
      description: 'softmax over experts (paper) or over tokens (mesh-TF)',
    }),
    normalizeByExpertsPerToken: Type.Boolean({ default: false, description: "divide a token's weights by the number of experts it got (mesh-TF option)" }),
  }),
  create: (c, ctx) => new ExpertChoiceRouter(ctx.need('dModel'), ctx.need('numExperts'), c, ctx.rng),
});
