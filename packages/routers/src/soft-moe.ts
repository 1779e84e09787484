/**
 * Soft MoE, Puigcerver et al. 2023 (arXiv 2308.00951; docs/routers.md#soft-moe; google-research/vmoe `SoftRouter`): every slot is a convex
 * mixture of the tokens of a group, every token a convex mixture of the slot outputs.
 *
 *   per group (one sequence) X [m, d];  Φ [d, E·S] slot parameters (LeCun-normal);  σ learned scalar (init 1)
 *   logits = (σ · l2norm_rows(Xr)) · l2norm_cols(Φ)        [m, E·S]   (Xr = the router input)
 *   D = softmax over tokens m (dispatch, per slot);   C = softmax over the E·S slots (combine, per token)
 *   X̃ = Dᵀ X  (the UN-normalised expert input)   Ỹ_{e,s} = f_e(X̃_{e,s})   Y = C Ỹ
 *
 * Normalisation: the official l2 + scalar, not lucidrains' RMSNorm + γ. No aux loss.
 * Not causal (every output mixes all tokens of its sequence): the `moe` layer refuses it in a causal LM.
 * Implements the router contract's `mix` method (the layer calls it instead of dispatch/combine).
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

export interface SoftMoEOptions {
  slotsPerExpert: number;
  normalize: boolean;
}

const l2norm = (x: tf.Tensor, axis: number) => tf.div(x, tf.sqrt(tf.add(tf.sum(tf.square(x), axis, true), 1e-6)));

export class SoftMoERouter extends Module implements Router {
  readonly flags = { causalSafe: false, batchDependent: true };
  readonly phi: tf.Variable;
  readonly scale: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: SoftMoEOptions,
    rng: Rng,
  ) {
    super();
    const ES = numExperts * options.slotsPerExpert;
    this.phi = this.param('phi', rng.truncNormalArray(dModel * ES, 1 / Math.sqrt(dModel)), [dModel, ES]);
    this.scale = this.param('scale', new Float32Array([1]), [1]);
  }

  get expertsPerToken(): number {
    return this.options.slotsPerExpert;
  }

  /** Dispatch [B, m, E·S] (softmax over m) and combine [B, m, E·S] (softmax over slots) weights. */
  weights(routerInput: tf.Tensor2D, B: number, m: number): { dispatch: tf.Tensor3D; combine: tf.Tensor3D } {
    const xr = this.options.normalize ? tf.mul(l2norm(routerInput, 1), this.scale) : routerInput;
    const phi = this.options.normalize ? l2norm(this.phi, 0) : this.phi;
    const logits = tf.reshape(tf.matMul(xr as tf.Tensor2D, phi as tf.Tensor2D), [B, m, -1]) as tf.Tensor3D;
    const dispatch = tf.transpose(tf.softmax(tf.transpose(logits, [0, 2, 1])), [0, 2, 1]) as tf.Tensor3D;
    return { dispatch, combine: tf.softmax(logits) as tf.Tensor3D };
  }

  route(): RouteResult {
    throw new MoelabError("soft-moe mixes tokens into slots: it runs through the MoE layer's mix path, not route()");
  }

  mix(x: tf.Tensor2D, routerInput: tf.Tensor2D, experts: ExpertBank, ctx: ForwardContext, info: RouteInfo): MixResult {
    const N = x.shape[0];
    const d = x.shape[1];
    const E = this.numExperts;
    const S = this.options.slotsPerExpert;
    const { B, T: m } = sequenceLayout(N, info.batchShape);
    const { dispatch, combine } = this.weights(routerInput, B, m);
    const slots = tf.matMul(dispatch, tf.reshape(x, [B, m, d]), true, false); // [B, E·S, d]
    const rows = B * E * S;
    const ex = Int32Array.from({ length: rows }, (_, i) => Math.floor(i / S) % E);
    const plan = new DispatchPlan(
      Int32Array.from({ length: rows }, (_, i) => i),
      ex,
      rows,
      E,
    );
    const ys = experts.apply(tf.reshape(slots, [rows, d]) as tf.Tensor2D, plan, null, ctx);
    const out = tf.matMul(combine, tf.reshape(ys, [B, E * S, d])); // [B, m, d]
    const perExpert = tf.sum(tf.reshape(combine, [N, E, S]), 2) as tf.Tensor2D;
    return { output: tf.reshape(out, [N, d]) as tf.Tensor2D, probs: perExpert, counts: new Array(E).fill(B * S) };
  }
}

export const softMoE = defineEntry({
  kind: 'router',
  name: 'soft-moe',
  description: 'Soft MoE (Puigcerver et al. 2023): slots = softmax-over-tokens mixtures of a sequence, outputs = softmax-over-slots mixtures; not causal.',
  reference: 'docs/routers.md#soft-moe; arXiv 2308.00951',
  flags: { causalSafe: false, batchDependent: true },
  schema: Config({
    slotsPerExpert: Type.Optional(
      Type.Integer({ minimum: 1, description: 'S slots per expert (default: round(capacityFactor · contextLength / E), at least 1)' }),
    ),
    capacityFactor: Type.Number({ exclusiveMinimum: 0, default: 1, description: 'slots = cf · m / E when slotsPerExpert is not given (vmoe: 1)' }),
    normalize: Type.Boolean({ default: true, description: 'l2-normalise inputs and slot parameters, learned scale (official)' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    const m = ctx.env.contextLength as number | undefined;
    const S = c.slotsPerExpert ?? Math.max(1, Math.round((c.capacityFactor * (m ?? E)) / E));
    return new SoftMoERouter(ctx.need('dModel'), E, { slotsPerExpert: S, normalize: c.normalize }, ctx.rng);
  },
});
