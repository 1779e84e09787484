/**
 * SMEAR: Soft Merging of Experts with Adaptive Routing, Muqeeth, Liu, Raffel 2023 (arXiv 2306.03745;
 * docs/routers.md#smear).
 *
 *   r = a summary of the example's router input;   p = softmax(W r) over experts
 *   θ̄ = Σ_e p_e θ_e  (every parameter tensor of the expert bank);   y_t = f(x_t; θ̄) for the example's tokens
 *
 * Fully differentiable (gradient reaches W through the merged parameters), no aux loss, compute ≈ one
 * expert + a parameter average per group. The summary r (`routeOn`; the paper's choice for decoder layers is
 * UNKNOWN, so all three are options):
 *   - `sequence-mean`: mean over the whole sequence (encoders; not causal → the layer refuses it in an LM);
 *   - `prefix-segment`: the sequence is cut in segments of `segmentLength`; segment j uses the mean of
 *     segment j−1 (the first segment: a zero summary → uniform merge). Lory-style, causal;
 *   - `bos`: the first token's router input (causal).
 * Needs an expert bank with `applyMerged` (e.g. `mlp`). Implements the router contract's `mix`.
 */
import {
  Config,
  defineEntry,
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

export type SmearRouteOn = 'sequence-mean' | 'prefix-segment' | 'bos';

export interface SmearOptions {
  routeOn: SmearRouteOn;
  segmentLength: number;
}

export class SmearRouter extends Module implements Router {
  readonly flags: { causalSafe: boolean; batchDependent: boolean };
  readonly weight: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: SmearOptions,
    rng: Rng,
  ) {
    super();
    const causal = options.routeOn !== 'sequence-mean';
    this.flags = { causalSafe: causal, batchDependent: !causal };
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
  }

  get expertsPerToken(): number {
    return 1;
  }

  route(): RouteResult {
    throw new MoelabError("smear merges expert parameters: it runs through the MoE layer's mix path, not route()");
  }

  /** Summaries [G, d] and the group of each row. */
  summaries(r: tf.Tensor2D, B: number, T: number): { summary: tf.Tensor2D; group: Int32Array } {
    const d = r.shape[1];
    const seq = tf.reshape(r, [B, T, d]);
    const N = B * T;
    if (this.options.routeOn === 'sequence-mean')
      return { summary: tf.mean(seq, 1) as tf.Tensor2D, group: Int32Array.from({ length: N }, (_, n) => Math.floor(n / T)) };
    if (this.options.routeOn === 'bos')
      return {
        summary: tf.reshape(tf.slice(seq, [0, 0, 0], [B, 1, d]), [B, d]) as tf.Tensor2D,
        group: Int32Array.from({ length: N }, (_, n) => Math.floor(n / T)),
      };
    const L = this.options.segmentLength;
    const nSeg = Math.ceil(T / L);
    const means: tf.Tensor[] = [tf.zeros([B, 1, d])];
    for (let j = 0; j + 1 < nSeg; j++) means.push(tf.mean(tf.slice(seq, [0, j * L, 0], [B, Math.min(L, T - j * L), d]), 1, true));
    const summary = tf.reshape(tf.concat(means, 1), [B * nSeg, d]) as tf.Tensor2D;
    return { summary, group: Int32Array.from({ length: N }, (_, n) => Math.floor(n / T) * nSeg + Math.floor((n % T) / L)) };
  }

  mix(x: tf.Tensor2D, routerInput: tf.Tensor2D, experts: ExpertBank, ctx: ForwardContext, info: RouteInfo): MixResult {
    if (!experts.applyMerged)
      throw new MoelabError(
        'the smear router needs an expert bank that can merge parameters (it has no applyMerged); use e.g. the "mlp" experts',
        this.path || undefined,
      );
    const N = x.shape[0];
    const { B, T } = sequenceLayout(N, info.batchShape);
    const { summary, group } = this.summaries(routerInput, B, T);
    const p = tf.softmax(tf.matMul(summary, this.weight, false, true)) as tf.Tensor2D; // [G, E]
    const output = experts.applyMerged(x, p, group, ctx);
    const perToken = tf.gather(p, tf.tensor1d(group, 'int32')) as tf.Tensor2D;
    const counts = Array.from(tf.sum(perToken, 0).dataSync());
    return { output, probs: perToken, counts };
  }
}

export const smear = defineEntry({
  kind: 'router',
  name: 'smear',
  description: "SMEAR (Muqeeth et al. 2023): per-example softmax merges the experts' parameters, one merged expert runs; fully differentiable.",
  reference: 'docs/routers.md#smear; arXiv 2306.03745',
  flags: { causalSafe: false, batchDependent: true },
  schema: Config({
    routeOn: Type.Union([Type.Literal('sequence-mean'), Type.Literal('prefix-segment'), Type.Literal('bos')], {
      default: 'sequence-mean',
      description: 'summary routed on: sequence mean (not causal), previous segment mean (causal), first token (causal)',
    }),
    segmentLength: Type.Integer({ minimum: 1, default: 16, description: 'segment length of prefix-segment routing' }),
  }),
  create: (c, ctx) => new SmearRouter(ctx.need('dModel'), ctx.need('numExperts'), c, ctx.rng),
});
