/**
 * Mixture of Tokens, Antoniak et al. 2023 (arXiv 2310.15961; docs/routers.md#mixture-of-tokens; llm-random/llm-random
 * `ContinuousMoeBaseClass`).
 *
 *   groups of g tokens at the SAME position of g different examples (`grouping: 'batch'`), or g consecutive
 *   tokens of one sequence (`'sequence'`, not causal);  controller c [E, d];  temperature τ
 *   w_e,i = softmax over the g tokens i of (c_e · x_i / τ)
 *   m_e = Σ_i w_e,i x_i;   o_e = E_e(m_e);   y_i = Σ_e w_e,i o_e        (same weights to merge and emit)
 *
 * Fully differentiable, no aux loss, no dropping; E expert calls per group whatever g. Causal within a
 * sequence with batch grouping, but batch-dependent: the batch must be a multiple of g and generation must
 * batch requests the same way (g = 1 is not a fallback: every weight becomes 1 and the layer sums all
 * experts). The `moe` layer refuses batch-dependent routers in a causal LM unless `allowBatchDependent`.
 * Implements the router contract's `mix`.
 */
import {
  Config,
  defineEntry,
  DispatchPlan,
  type ExpertBank,
  type ForwardContext,
  type MixResult,
  Module,
  MoelabError,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  Type,
  tf,
} from '@moelab/core';
import { sequenceLayout } from './common.js';

export interface MixtureOfTokensOptions {
  groupSize: number;
  grouping: 'batch' | 'sequence';
  temperature: number;
}

export class MixtureOfTokensRouter extends Module implements Router {
  readonly flags: { causalSafe: boolean; batchDependent: boolean };
  readonly controller: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: MixtureOfTokensOptions,
    rng: Rng,
  ) {
    super();
    this.flags = { causalSafe: options.grouping === 'batch', batchDependent: true };
    this.controller = this.param('controller', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
  }

  get expertsPerToken(): number {
    return this.numExperts;
  }

  route(): RouteResult {
    throw new MoelabError("mixture-of-tokens mixes tokens across examples: it runs through the MoE layer's mix path, not route()");
  }

  /** Row permutation that puts each group's g tokens together: rows of the result are [G, g]. */
  groupOrder(B: number, T: number): Int32Array {
    const g = this.options.groupSize;
    const N = B * T;
    if (this.options.grouping === 'sequence') {
      if (T % g !== 0) throw new MoelabError(`mixture-of-tokens: sequence length ${T} is not a multiple of groupSize ${g}`, this.path || undefined);
      return Int32Array.from({ length: N }, (_, n) => n);
    }
    if (B % g !== 0)
      throw new MoelabError(
        `mixture-of-tokens: batch size ${B} is not a multiple of groupSize ${g} (groups are made of tokens at the same position of ${g} examples)`,
        this.path || undefined,
      );
    // group (bb, t) = examples bb*g .. bb*g+g-1 at position t
    const order = new Int32Array(N);
    let i = 0;
    for (let bb = 0; bb < B / g; bb++) for (let t = 0; t < T; t++) for (let j = 0; j < g; j++) order[i++] = (bb * g + j) * T + t;
    return order;
  }

  mix(x: tf.Tensor2D, routerInput: tf.Tensor2D, experts: ExpertBank, ctx: ForwardContext, info: RouteInfo): MixResult {
    const [N, d] = x.shape;
    const E = this.numExperts;
    const g = this.options.groupSize;
    const { B, T } = sequenceLayout(N, info.batchShape);
    const order = this.groupOrder(B, T);
    const idx = tf.tensor1d(order, 'int32');
    const G = N / g;
    const xg = tf.reshape(tf.gather(x, idx), [G, g, d]);
    const rg = tf.reshape(tf.gather(routerInput, idx), [G, g, -1]);
    const logits = tf.div(tf.reshape(tf.matMul(tf.reshape(rg, [N, -1]), this.controller, false, true), [G, g, E]), this.options.temperature);
    const w = tf.softmax(tf.transpose(logits, [0, 2, 1])) as tf.Tensor3D; // [G, E, g], softmax over the group's tokens
    const mixed = tf.reshape(tf.matMul(w, xg), [G * E, d]) as tf.Tensor2D;
    const rows = G * E;
    const plan = new DispatchPlan(
      Int32Array.from({ length: rows }, (_, i) => i),
      Int32Array.from({ length: rows }, (_, i) => i % E),
      rows,
      E,
    );
    const o = tf.reshape(experts.apply(mixed, plan, null, ctx), [G, E, d]);
    const yg = tf.reshape(tf.matMul(w, o, true, false), [N, d]); // [G, g, d] in group order
    const inverse = new Int32Array(N);
    for (let i = 0; i < N; i++) inverse[order[i]!] = i;
    const output = tf.gather(yg, tf.tensor1d(inverse, 'int32')) as tf.Tensor2D;
    const perToken = tf.gather(tf.reshape(tf.transpose(w, [0, 2, 1]), [N, E]), tf.tensor1d(inverse, 'int32')) as tf.Tensor2D;
    return { output, probs: perToken, counts: new Array(E).fill(G) };
  }
}

export const mixtureOfTokens = defineEntry({
  kind: 'router',
  name: 'mixture-of-tokens',
  description:
    'Mixture of Tokens (Antoniak et al. 2023): each expert processes a softmax mixture of the tokens of a cross-example group; fully differentiable.',
  reference: 'docs/routers.md#mixture-of-tokens; arXiv 2310.15961',
  flags: { causalSafe: true, batchDependent: true },
  schema: Config({
    groupSize: Type.Integer({ minimum: 2, default: 4, description: 'g tokens per group (the batch must be a multiple of g)' }),
    grouping: Type.Union([Type.Literal('batch'), Type.Literal('sequence')], {
      default: 'batch',
      description: 'group tokens at one position across examples (causal) or consecutive tokens of a sequence (not causal)',
    }),
    temperature: Type.Number({ exclusiveMinimum: 0, default: 1, description: 'softmax temperature τ (transition tuning anneals it towards 0)' }),
  }),
  create: (c, ctx) => new MixtureOfTokensRouter(ctx.need('dModel'), ctx.need('numExperts'), c, ctx.rng),
});
