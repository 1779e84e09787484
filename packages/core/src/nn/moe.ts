/**
 * The MoE layer shell: router -> dispatch plan -> (capacity / mask) -> experts -> combine.
 * Aux losses and routing statistics are returned through the forward context, never hidden.
 *
 * Core knows no concrete router or expert: they are registry entries (`router`, `expert` kinds) that
 * implement the two interfaces below.
 */
import type { ForwardContext, RoutingStats } from '../module.js';
import { Module } from '../module.js';
import { MoelabError } from '../errors.js';
import { tf } from '../tf.js';
import { capacityMask, DispatchPlan, type DropPolicy, dropPriority, expertCapacity } from './dispatch.js';
import type { Linear } from './layers.js';

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
  /** Raw router logits [T, E], when the router has them (for the z-loss monitor of the metrics). */
  logits?: tf.Tensor2D;
}

/**
 * What a router returns when it computes the layer output itself (Soft MoE, SMEAR, Mixture of Tokens):
 * these routers mix tokens or parameters instead of emitting (token, expert) assignments.
 */
export interface MixResult {
  /** The layer output [T, d]. */
  output: tf.Tensor2D;
  /** Per-token distribution over experts [T, E], for entropy statistics. */
  probs?: tf.Tensor2D;
  /** Work each expert did in this call (slots, mixed tokens, merged examples), for the load statistics. */
  counts?: number[];
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
  /**
   * Optional: routers whose output is not "assignments + weights" (Soft MoE, SMEAR, Mixture of Tokens)
   * implement this instead; the MoE layer then calls it in place of route -> dispatch -> experts -> combine.
   * `x` [T, d] is the expert input, `routerInput` [T, d'] what the router looks at (x unless peri-norm).
   */
  mix?(x: tf.Tensor2D, routerInput: tf.Tensor2D, experts: ExpertBank, ctx: ForwardContext, info: RouteInfo): MixResult;
}

/** What `ForwardContext.moeObserver` sees of one `moe` layer call. */
export interface MoERouteEvent {
  /** The MoE layer's parameter path (e.g. `transformer.layers.0.ffn`). */
  layer: string;
  /** Expert input [T, d] (the flattened layer input). */
  x: tf.Tensor2D;
  /** The router's result, before masks and capacity. */
  routed: RouteResult;
  /** The assignments the experts run (after masks and capacity) and their combine weights (null = 1). */
  plan: DispatchPlan;
  weight: tf.Tensor1D | null;
  experts: ExpertBank;
  ctx: ForwardContext;
}

/** An edit of one layer's router logits [T, E] before its softmax / top-k (same shape out). */
export type RouterLogitEdit = (logits: tf.Tensor2D) => tf.Tensor2D;

/**
 * The router logits after the edit `ctx.routerLogitEdits` holds for the router's MoE layer (the parent
 * of `routerPath`), or unchanged. Routers call it on their logits before softmax and top-k.
 */
export function editRouterLogits(ctx: ForwardContext, routerPath: string, logits: tf.Tensor2D): tf.Tensor2D {
  const edits = ctx.routerLogitEdits;
  if (!edits) return logits;
  const layer = routerPath.slice(0, Math.max(0, routerPath.lastIndexOf('.')));
  const edit = edits.get(layer);
  if (!edit) return logits;
  ctx.routerLogitEditsApplied ??= new Set();
  ctx.routerLogitEditsApplied.add(layer);
  const out = edit(logits);
  if (out.shape[0] !== logits.shape[0] || out.shape[1] !== logits.shape[1])
    throw new MoelabError(`a router-logit edit returned shape [${out.shape}] for logits [${logits.shape}]`, layer);
  return out;
}

export interface ExpertBank extends Module {
  readonly numExperts: number;
  /** out[t] = sum over the plan's assignments n of token t: weight[n] * expert_{e_n}(x[t]). Returns [T, d]. */
  apply(x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, ctx: ForwardContext): tf.Tensor2D;
  /** Parameters of one expert (for active-parameter counts). */
  parametersPerExpert(): number;
  /**
   * Optional (SMEAR): run, for each row t of x [T, d], ONE expert whose parameters are the mixture
   * sum_e mergeWeight[group[t], e] * theta_e of every expert's parameters. mergeWeight [G, E]. Returns [T, d].
   */
  applyMerged?(x: tf.Tensor2D, mergeWeight: tf.Tensor2D, group: Int32Array, ctx: ForwardContext): tf.Tensor2D;
}

/** Feed-forward sublayers (dense FFN or MoE) implement this. */
export interface FeedForward extends Module {
  forward(x: tf.Tensor, ctx: ForwardContext, sources?: { routerInput?: tf.Tensor }): tf.Tensor;
}

export interface MoELayerOptions {
  /** Capacity factor: each expert keeps at most ceil(cf * assignments / E); 0 = dropless. */
  capacityFactor: number;
  /** Capacity factor in eval mode (default: `capacityFactor`); Switch/ST-MoE use 1.25 train, 2.0 eval. */
  evalCapacityFactor?: number;
  /** Smallest per-expert capacity when capacity is on (default 1; mesh-TF and DeepSpeed use 4). */
  minCapacity?: number;
  /** Which assignments survive the capacity limit (default `position`), docs/routers.md#capacity-and-dropping. */
  dropPolicy?: DropPolicy;
  /**
   * Gate on the shared experts' output (default `none`: added as is). `sigmoid` (Qwen2-MoE): the shared
   * output is scaled per token by σ(w·x), w = the `shared_expert_gate.weight` [1, d] parameter of the
   * layer, x = the router input (the layer input unless peri-norm). Needs shared experts and the gate
   * module (a `Linear(d, 1)` without bias) as the layer's fifth constructor argument.
   */
  sharedGate?: 'none' | 'sigmoid';
}

export class MoELayer extends Module implements FeedForward {
  constructor(
    readonly router: Router,
    readonly experts: ExpertBank,
    readonly options: MoELayerOptions,
    readonly shared?: ExpertBank,
    /** Qwen2-MoE's shared-expert gate, a Linear(d, 1) without bias (with `sharedGate: 'sigmoid'`). */
    readonly sharedExpertGate?: Linear,
  ) {
    super();
    if (router.numExperts !== experts.numExperts) {
      throw new MoelabError(`the router routes to ${router.numExperts} experts but the expert bank holds ${experts.numExperts}`, router.path || undefined);
    }
    const gated = (options.sharedGate ?? 'none') === 'sigmoid';
    if (gated && !shared) throw new MoelabError("sharedGate: 'sigmoid' gates the shared experts, but this moe layer has none (set `shared`)");
    if (gated !== !!sharedExpertGate)
      throw new MoelabError(`sharedGate '${options.sharedGate ?? 'none'}' ${gated ? 'needs' : 'takes no'} a shared_expert_gate module`);
    if (sharedExpertGate && sharedExpertGate.outFeatures !== 1)
      throw new MoelabError(`shared_expert_gate must map to 1 output (got ${sharedExpertGate.outFeatures})`);
    this.child('router', router);
    this.child('experts', experts);
    if (shared) this.child('shared', shared);
    if (sharedExpertGate) this.child('shared_expert_gate', sharedExpertGate);
  }

  /**
   * Cached decoding feeds this layer the new rows only: fine when a row's experts depend on that row
   * alone (causal-safe, batch-independent routers, no capacity drops at inference); otherwise the reason.
   */
  override cachedDecodingBlocker(): string | null {
    const name = this.router.constructor.name;
    if (this.router.mix) return `router ${name} mixes tokens or expert parameters across the rows of a call, so one new row alone computes something else`;
    if (this.router.flags.batchDependent || !this.router.flags.causalSafe)
      return `router ${name} is ${this.router.flags.causalSafe ? 'batch-dependent' : 'not causal'}: a token's experts depend on other tokens of the call`;
    const cf = this.options.evalCapacityFactor ?? this.options.capacityFactor;
    if (cf > 0)
      return `capacity factor ${cf} at inference drops assignments depending on the other tokens of the call (set evalCapacityFactor: 0 to decode with a cache)`;
    return null;
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: { routerInput?: tf.Tensor } = {}): tf.Tensor {
    const shape = x.shape;
    const d = shape[shape.length - 1]!;
    const flat = tf.reshape(x, [-1, d]) as tf.Tensor2D;
    const routerIn = sources.routerInput ? (tf.reshape(sources.routerInput, [-1, sources.routerInput.shape.at(-1)!]) as tf.Tensor2D) : flat;
    if (this.router.mix) return this.forwardMix(x, flat, routerIn, ctx);
    const edited = ctx.routerLogitEdits?.has(this.path);
    if (edited) ctx.routerLogitEditsApplied?.delete(this.path);
    const routed = this.router.route(routerIn, ctx, { batchShape: shape.slice(0, -1) });
    if (edited && !ctx.routerLogitEditsApplied?.has(this.path))
      throw new MoelabError(
        `router ${this.router.constructor.name} does not take router-logit edits (runtime expert masking, steering); routers that do: softmax-topk and its presets, deepseek-moe, deepseek-v3, sigma-topk, top-p`,
        this.path,
      );
    let { plan, weight } = routed;
    const assigned = plan.size;

    const masked = this.maskedExperts(ctx);
    let keep: Uint8Array | undefined;
    if (masked && masked.size > 0) {
      keep = new Uint8Array(plan.size);
      for (let n = 0; n < plan.size; n++) keep[n] = masked.has(plan.expertIndex[n]!) ? 0 : 1;
    }
    const cf = ctx.training ? this.options.capacityFactor : (this.options.evalCapacityFactor ?? this.options.capacityFactor);
    if (cf > 0) {
      const policy = this.options.dropPolicy ?? 'position';
      const w = policy === 'probs' || policy === 'batch-prioritized' ? (weight ? weight.dataSync() : null) : null;
      const priority = dropPriority(plan, policy, w, () => ctx.rng.next());
      const capacity = Math.max(this.options.minCapacity ?? 1, expertCapacity(assigned, plan.numExperts, cf));
      const cap = capacityMask(plan, capacity, priority);
      keep = keep ? keep.map((k, i) => k & cap[i]!) : cap;
    }
    if (keep) {
      const { plan: kept, kept: ids } = plan.filter(keep);
      if (weight) weight = tf.gather(weight, tf.tensor1d(ids, 'int32'));
      plan = kept;
    }

    ctx.moeObserver?.({ layer: this.path, x: flat, routed, plan, weight, experts: this.experts, ctx });
    let out = this.experts.apply(flat, plan, weight, ctx);
    out = this.addShared(flat, out, ctx, routerIn);
    this.record(ctx, plan, assigned, routed);
    return tf.reshape(out, shape);
  }

  /** Routers that mix tokens or parameters (Soft MoE, SMEAR, MoT) compute the routed output themselves. */
  private forwardMix(x: tf.Tensor, flat: tf.Tensor2D, routerIn: tf.Tensor2D, ctx: ForwardContext): tf.Tensor {
    const masked = this.maskedExperts(ctx);
    const bank = masked && masked.size > 0 ? maskedExpertBank(this.experts, masked) : this.experts;
    const res = this.router.mix!(flat, routerIn, bank, ctx, { batchShape: x.shape.slice(0, -1) });
    const out = this.addShared(flat, res.output, ctx, routerIn);
    if (ctx.stats === false) return tf.reshape(out, x.shape);
    const E = this.experts.numExperts;
    const counts = res.counts ? res.counts.slice() : new Array<number>(E).fill(0);
    if (masked) for (const e of masked) if (e >= 0 && e < E) counts[e] = 0;
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    const stats: RoutingStats = {
      layer: this.path,
      numExperts: E,
      tokens: flat.shape[0],
      counts,
      load: counts.map((c) => c / total),
      dropRate: 0,
      expertsPerToken: E,
      extra: res.extra,
    };
    if (res.probs) Object.assign(stats, distributionStats(res.probs));
    ctx.routing.push(stats);
    return tf.reshape(out, x.shape);
  }

  /** out + shared(x), or out + σ(w·routerIn) ⊙ shared(x) with the Qwen2-MoE gate. */
  private addShared(flat: tf.Tensor2D, out: tf.Tensor2D, ctx: ForwardContext, routerIn: tf.Tensor2D = flat): tf.Tensor2D {
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
      let sharedOut = this.shared.apply(flat, new DispatchPlan(tok, ex, T, S), null, ctx);
      if (this.sharedExpertGate) sharedOut = tf.mul(sharedOut, tf.sigmoid(this.sharedExpertGate.forward(routerIn))) as tf.Tensor2D;
      out = tf.add(out, sharedOut);
    }
    return out;
  }

  private maskedExperts(ctx: ForwardContext): Set<number> | undefined {
    if (!ctx.expertMask) return undefined;
    const masked = ctx.expertMask.get(this.path);
    const E = this.experts.numExperts;
    if (masked)
      for (const id of masked)
        if (!Number.isInteger(id) || id < 0 || id >= E) throw new MoelabError(`expert mask id ${id} is out of range [0, ${E}) for this moe layer`, this.path);
    return masked;
  }

  private record(ctx: ForwardContext, plan: DispatchPlan, assigned: number, routed: RouteResult): void {
    if (ctx.assignments) {
      const list = ctx.assignments.get(this.path) ?? [];
      list.push({ tokenIndex: plan.tokenIndex, expertIndex: plan.expertIndex, tokens: plan.numTokens });
      ctx.assignments.set(this.path, list);
    }
    if (ctx.stats === false) return;
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
      intendedCounts: Array.from(routed.plan.counts),
    };
    const T = plan.numTokens;
    const per = new Int32Array(T);
    for (let n = 0; n < plan.size; n++) per[plan.tokenIndex[n]!]!++;
    const wanted = new Uint8Array(T);
    for (let n = 0; n < routed.plan.size; n++) wanted[routed.plan.tokenIndex[n]!] = 1;
    let min = Number.POSITIVE_INFINITY;
    let max = 0;
    let lost = 0;
    for (let t = 0; t < T; t++) {
      min = Math.min(min, per[t]!);
      max = Math.max(max, per[t]!);
      if (wanted[t] && per[t] === 0) lost++;
    }
    stats.expertsPerTokenMin = T > 0 ? min : 0;
    stats.expertsPerTokenMax = max;
    stats.tokenDropRate = T > 0 ? lost / T : 0;
    if (routed.probs) Object.assign(stats, distributionStats(routed.probs));
    if (routed.logits) {
      const z = routed.logits.dataSync();
      const E = routed.logits.shape[1];
      let s = 0;
      for (let t = 0; t < T; t++) {
        let m = Number.NEGATIVE_INFINITY;
        for (let e = 0; e < E; e++) m = Math.max(m, z[t * E + e]!);
        let acc = 0;
        for (let e = 0; e < E; e++) acc += Math.exp(z[t * E + e]! - m);
        s += (m + Math.log(acc)) ** 2;
      }
      stats.zLoss = s / Math.max(1, T);
    }
    ctx.routing.push(stats);
  }

  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    let n = this.router.activeParameterCount(seen);
    if (this.shared) n += this.shared.activeParameterCount(seen);
    if (this.sharedExpertGate) n += this.sharedExpertGate.activeParameterCount(seen);
    seen.add(this.experts);
    return n + this.experts.parametersPerExpert() * this.router.expertsPerToken;
  }

  /** Router + shared experts + k routed experts (one MAC per active weight). */
  override macsPerToken(_seqLen: number): number {
    return this.activeParameterCount();
  }
}

/**
 * The expert bank as a mixing router (Soft MoE, SMEAR, Mixture of Tokens) sees it when experts are masked
 * (docs/monet.md#expert-masking: the removed expert's contribution is zeroed, the rest is not renormalised):
 * `apply` drops the plan's assignments to masked experts (their slots / mixed tokens produce zeros),
 * `applyMerged` zeroes the masked experts' merge weights. Masked experts then get no input and zero gradient.
 */
export function maskedExpertBank(bank: ExpertBank, masked: Set<number>): ExpertBank {
  const E = bank.numExperts;
  for (const id of masked)
    if (!Number.isInteger(id) || id < 0 || id >= E) throw new MoelabError(`expert mask id ${id} is out of range [0, ${E}) for this expert bank`, bank.path);
  const view = Object.create(bank) as ExpertBank;
  view.apply = (x, plan, weight, ctx) => {
    const keep = new Uint8Array(plan.size);
    for (let n = 0; n < plan.size; n++) keep[n] = masked.has(plan.expertIndex[n]!) ? 0 : 1;
    const { plan: kept, kept: ids } = plan.filter(keep);
    return bank.apply(x, kept, weight ? tf.gather(weight, tf.tensor1d(ids, 'int32')) : null, ctx);
  };
  if (bank.applyMerged) {
    const keep = Float32Array.from({ length: E }, (_, e) => (masked.has(e) ? 0 : 1));
    view.applyMerged = (x, mergeWeight, group, ctx) => bank.applyMerged!(x, tf.mul(mergeWeight, tf.tensor2d(keep, [1, E])) as tf.Tensor2D, group, ctx);
  }
  return view;
}

/**
 * Statistics of per-token routing distributions p [T, E] (rows renormalised to sum to 1; all-zero rows
 * skipped): mean per-token entropy, entropy of the mean distribution (nats), and the fraction of tokens
 * whose largest probability exceeds 0.99 (docs/metrics.md#definitions).
 */
export function distributionStats(probs: tf.Tensor2D): { entropy: number; marginalEntropy: number; saturation: number } {
  const p = probs.dataSync();
  const [T, E] = probs.shape;
  let h = 0;
  let rows = 0;
  let saturated = 0;
  const mean = new Float64Array(E);
  for (let t = 0; t < T; t++) {
    let z = 0;
    for (let e = 0; e < E; e++) z += p[t * E + e]!;
    if (!(z > 0)) continue;
    rows++;
    let top = 0;
    for (let e = 0; e < E; e++) {
      const q = p[t * E + e]! / z;
      mean[e]! += q;
      top = Math.max(top, q);
      if (q > 0) h -= q * Math.log(q);
    }
    if (top > 0.99) saturated++;
  }
  let hm = 0;
  for (let e = 0; e < E; e++) {
    const q = mean[e]! / Math.max(1, rows);
    if (q > 0) hm -= q * Math.log(q);
  }
  return { entropy: h / Math.max(1, T), marginalEntropy: hm, saturation: saturated / Math.max(1, rows) };
}
