/**
 * The MoE layer shell: router -> dispatch plan -> (capacity / mask) -> experts -> combine.
 * Aux losses and routing statistics are returned through the forward context, never hidden.
 *
 * Core knows no concrete router or expert: they are registry entries (`router`, `expert` kinds) that
 * implement the two interfaces below.
 */
import type { ForwardContext, RoutingStats } from '../module.js';
import { Module } from '../module.js';
import { tf } from '../tf.js';
import { capacityMask, DispatchPlan, expertCapacity } from './dispatch.js';

export interface RouterFlags {
  /** Routing of a token depends only on that token and earlier ones: safe in causal decoding. */
  causalSafe: boolean;
  /** Routing of a token depends on other tokens of the batch (expert choice, Soft MoE, BatchNorm routers). */
  batchDependent: boolean;
}

export interface RouteResult {
  /** Assignments in priority order (earlier ones win when capacity is short). */
  plan: DispatchPlan;
  /** Combine weight of each assignment, differentiable w.r.t. router parameters; null = 1. */
  weight: tf.Tensor1D | null;
  /** Per-token routing distribution [T, E], when the router has one (for entropy statistics). */
  probs?: tf.Tensor2D;
  /** Router-specific numbers for the metrics log. */
  extra?: Record<string, number>;
}

/** Where the flattened tokens a router sees came from. */
export interface RouteInfo {
  /** Leading shape of the layer input before flattening, e.g. [B, T] (rows of x = its product). */
  batchShape: number[];
}

export interface Router extends Module {
  readonly numExperts: number;
  /** Nominal experts per token (for active-parameter counts). */
  readonly expertsPerToken: number;
  readonly flags: RouterFlags;
  /** Route tokens x [T, d]. Aux losses are pushed to ctx.aux. `info` tells per-sequence routers the [B, T] layout. */
  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult;
}

export interface ExpertBank extends Module {
  readonly numExperts: number;
  /** out[t] = sum over the plan's assignments n of token t: weight[n] * expert_{e_n}(x[t]). Returns [T, d]. */
  apply(x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, ctx: ForwardContext): tf.Tensor2D;
  /** Parameters of one expert (for active-parameter counts). */
  parametersPerExpert(): number;
}

/** Feed-forward sublayers (dense FFN or MoE) implement this. */
export interface FeedForward extends Module {
  forward(x: tf.Tensor, ctx: ForwardContext, sources?: { routerInput?: tf.Tensor }): tf.Tensor;
}

export interface MoELayerOptions {
  /** Capacity factor: each expert keeps at most ceil(cf * assignments / E); 0 = dropless. */
  capacityFactor: number;
}

export class MoELayer extends Module implements FeedForward {
  constructor(
    readonly router: Router,
    readonly experts: ExpertBank,
    readonly options: MoELayerOptions,
    readonly shared?: ExpertBank,
  ) {
    super();
    if (router.numExperts !== experts.numExperts) {
      throw new Error(`router has ${router.numExperts} experts but the expert bank has ${experts.numExperts}`);
    }
    this.child('router', router);
    this.child('experts', experts);
    if (shared) this.child('shared', shared);
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: { routerInput?: tf.Tensor } = {}): tf.Tensor {
    const shape = x.shape;
    const d = shape[shape.length - 1]!;
    const flat = tf.reshape(x, [-1, d]) as tf.Tensor2D;
    const routerIn = sources.routerInput ? (tf.reshape(sources.routerInput, [-1, sources.routerInput.shape.at(-1)!]) as tf.Tensor2D) : flat;
    const routed = this.router.route(routerIn, ctx, { batchShape: shape.slice(0, -1) });
    let { plan, weight } = routed;
    const assigned = plan.size;

    const masked = this.maskedExperts(ctx);
    let keep: Uint8Array | undefined;
    if (masked && masked.size > 0) {
      keep = new Uint8Array(plan.size);
      for (let n = 0; n < plan.size; n++) keep[n] = masked.has(plan.expertIndex[n]!) ? 0 : 1;
    }
    if (this.options.capacityFactor > 0) {
      const cap = capacityMask(plan, expertCapacity(assigned, plan.numExperts, this.options.capacityFactor));
      keep = keep ? keep.map((k, i) => k & cap[i]!) : cap;
    }
    if (keep) {
      const { plan: kept, kept: ids } = plan.filter(keep);
      if (weight) weight = tf.gather(weight, tf.tensor1d(ids, 'int32'));
      plan = kept;
    }

    let out = this.experts.apply(flat, plan, weight, ctx);
    if (this.shared) {
      const T = flat.shape[0];
      const S = this.shared.numExperts;
      const tok = new Int32Array(T * S);
      const ex = new Int32Array(T * S);
      for (let s = 0; s < S; s++)
        for (let t = 0; t < T; t++) {
          tok[s * T + t] = t;
          ex[s * T + t] = s;
        }
      out = tf.add(out, this.shared.apply(flat, new DispatchPlan(tok, ex, T, S), null, ctx));
    }
    this.record(ctx, plan, assigned, routed);
    return tf.reshape(out, shape);
  }

  private maskedExperts(ctx: ForwardContext): Set<number> | undefined {
    if (!ctx.expertMask) return undefined;
    return ctx.expertMask.get(this.path);
  }

  private record(ctx: ForwardContext, plan: DispatchPlan, assigned: number, routed: RouteResult): void {
    const counts = Array.from(plan.counts);
    const total = plan.size || 1;
    const stats: RoutingStats = {
      layer: this.path,
      numExperts: plan.numExperts,
      tokens: plan.numTokens,
      counts,
      load: counts.map((c) => c / total),
      dropRate: assigned > 0 ? 1 - plan.size / assigned : 0,
      expertsPerToken: plan.numTokens > 0 ? plan.size / plan.numTokens : 0,
      extra: routed.extra,
    };
    if (routed.probs) {
      const p = routed.probs.dataSync();
      const E = plan.numExperts;
      let h = 0;
      for (let t = 0; t < plan.numTokens; t++) {
        let z = 0;
        for (let e = 0; e < E; e++) z += p[t * E + e]!;
        if (z <= 0) continue;
        for (let e = 0; e < E; e++) {
          const q = p[t * E + e]! / z;
          if (q > 0) h -= q * Math.log(q);
        }
      }
      stats.entropy = h / Math.max(1, plan.numTokens);
    }
    ctx.routing.push(stats);
    if (ctx.assignments) {
      const list = ctx.assignments.get(this.path) ?? [];
      list.push({ tokenIndex: plan.tokenIndex, expertIndex: plan.expertIndex, tokens: plan.numTokens });
      ctx.assignments.set(this.path, list);
    }
  }

  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    let n = this.router.activeParameterCount(seen);
    if (this.shared) n += this.shared.activeParameterCount(seen);
    seen.add(this.experts);
    return n + this.experts.parametersPerExpert() * this.router.expertsPerToken;
  }

  /** Router + shared experts + k routed experts (one MAC per active weight). */
  override macsPerToken(_seqLen: number): number {
    return this.activeParameterCount();
  }
}
