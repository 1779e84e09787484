/**
 * The routing observer: one streaming calibration pass that accumulates, per MoE layer, every routing
 * statistic the compression methods of this package need (docs/compression.md#the-routing-observer).
 * For one layer with E experts, routed set S_t, combine weight g_{t,e} (as the router computes it:
 * renormalised over the top-k or not), expert output f_e(x_t), router logits z_t and distribution p_t:
 *
 *   count[e]       = #{t : e ∈ S_t}                         gateSum[e]    = Σ_{t: e∈S_t} g_{t,e}
 *   outNormSum[e]  = Σ_{t: e∈S_t} ‖f_e(x_t)‖₂               reapSum[e]    = Σ_{t: e∈S_t} g_{t,e} ‖f_e(x_t)‖₂
 *   maxAbsOut[e]   = max_{t: e∈S_t} ‖f_e(x_t)‖_∞            inSqGated[e,j] = Σ_{t: e∈S_t} (g_{t,e} x_{t,j})²
 *   logitSum[e]    = Σ_t z_{t,e}                           logitGram[i,j] = Σ_t z_{t,i} z_{t,j}
 *   coact[i,j]     = #{t : i, j ∈ S_t}                      entropySum    = Σ_t H(p_t)
 *   per-domain and per-phase (prefill / decode) copies of `count` and of the token count.
 *   hiddenSqGated[e,i] = Σ_{t: e∈S_t} (g_{t,e} u_{e,t,i})²   (option `hidden`, mlp / glu banks: u = the input of W2)
 *   easySum[e]     = Σ_{t: e∈S_t} g_{t,e} ‖f_e(x_t)‖₂ · w_t,  w_t = 1 − cos(h_t, h_t + r_t) ∈ [0, 2]
 *                    (EASY-EP: h_t the residual stream the layer output is added to, r_t = Σ_{e∈S_t} g_{t,e} f_e(x_t))
 *
 * Every sum is a float64 accumulator and never holds a token; padding rows (`valid[t] = 0`) are
 * excluded from every statistic. The `moe` layer reports each call through `ForwardContext.moeObserver`
 * (whatever its router and expert bank: the expert outputs come from the bank's own `apply`, one call
 * per layer call); layers that only report per-call counts (MONET, PEER, FFF, mixing routers) add to
 * the per-domain counts through their `RoutingStats`.
 */
import {
  crossEntropy,
  DispatchPlan,
  type ForwardContext,
  forwardContext,
  type LanguageModel,
  type Module,
  type MoERouteEvent,
  MoelabError,
  Rng,
  type RoutingStats,
  tf,
} from '@moelab/core';
import { asMlpBank, type MlpBank, mlpHidden } from './bank.js';

function isMlpBank(experts: unknown): experts is MlpBank {
  try {
    asMlpBank(experts, '', '');
    return true;
  } catch {
    return false;
  }
}

/** Prefill (the prompt, or any full-sequence pass) or decode (one new token per cached step). */
export type Phase = 'prefill' | 'decode';

/** How the rows of one observed forward pass are labelled. */
export interface ObserveTag {
  /** A user label (corpus domain, prompt set) for the per-domain counts. */
  domain?: string;
  /** Default `prefill`. */
  phase?: Phase;
  /** Per row of the flattened [B·T] input: nonzero = a real token, 0 = padding (excluded everywhere). */
  valid?: ArrayLike<number>;
}

/** The accumulators of one MoE layer (see the file comment for the definitions). */
export class LayerStats {
  /** Tokens seen (valid rows, summed over calls: a layer shared by R repeats sees each token R times). */
  tokens = 0;
  readonly count: Float64Array;
  readonly gateSum: Float64Array;
  readonly outNormSum: Float64Array;
  readonly reapSum: Float64Array;
  readonly maxAbsOut: Float64Array;
  /** [E, d] row-major, allocated on the first call that sees the expert input (option `inputs`). */
  inSqGated: Float64Array | null = null;
  /** Expert input width d, once seen. */
  inputDim = 0;
  /** [E, h] row-major: the gated squared inputs of W2 (option `hidden`, mlp / glu banks only). */
  hiddenSqGated: Float64Array | null = null;
  /** Hidden width h, once seen. */
  hiddenDim = 0;
  /** EASY-EP's sums (see the file comment); only filled when the block reports its residual stream. */
  readonly easySum: Float64Array;
  /** Tokens that contributed to `easySum` (their residual stream was seen). */
  easyTokens = 0;
  readonly logitSum: Float64Array;
  /** [E, E] row-major. */
  readonly logitGram: Float64Array;
  /** Tokens whose router logits were seen (the router reports logits). */
  logitTokens = 0;
  /** [E, E] row-major; the diagonal equals `count`. */
  readonly coact: Float64Array;
  entropySum = 0;
  /** Tokens whose routing distribution was seen (the router reports one). */
  entropyTokens = 0;
  /** Intended assignments (before capacity drops and masks) per domain label, and tokens per label. */
  readonly domainCounts = new Map<string, Float64Array>();
  readonly domainTokens = new Map<string, number>();
  /** The same per phase. */
  readonly phaseCounts = new Map<Phase, Float64Array>();
  readonly phaseTokens = new Map<Phase, number>();
  /** True when the layer reported per-assignment details (a `moe` layer with an assignment router). */
  detailed = false;

  constructor(
    readonly layer: string,
    readonly numExperts: number,
  ) {
    const E = numExperts;
    this.count = new Float64Array(E);
    this.gateSum = new Float64Array(E);
    this.outNormSum = new Float64Array(E);
    this.reapSum = new Float64Array(E);
    this.easySum = new Float64Array(E);
    this.maxAbsOut = new Float64Array(E);
    this.logitSum = new Float64Array(E);
    this.logitGram = new Float64Array(E * E);
    this.coact = new Float64Array(E * E);
  }

  /** REAP score: reapSum / count (0 for an expert never routed to). */
  reap(): Float64Array {
    return this.count.map((c, e) => (c > 0 ? this.reapSum[e]! / c : 0));
  }

  /** Mean expert output norm over its routed tokens (EAN mean). */
  eanMean(): Float64Array {
    return this.count.map((c, e) => (c > 0 ? this.outNormSum[e]! / c : 0));
  }

  /** mean_t z_{t,e} (null when the router reports no logits). */
  logitMean(): Float64Array | null {
    if (this.logitTokens === 0) return null;
    return this.logitSum.map((s) => s / this.logitTokens);
  }

  /** Cosine between the router-logit columns i and j over the calibration tokens, [E, E] (null without logits). */
  logitCosine(): Float64Array | null {
    if (this.logitTokens === 0) return null;
    const E = this.numExperts;
    const out = new Float64Array(E * E);
    for (let i = 0; i < E; i++)
      for (let j = 0; j < E; j++) {
        const den = Math.sqrt(this.logitGram[i * E + i]! * this.logitGram[j * E + j]!);
        out[i * E + j] = den > 0 ? this.logitGram[i * E + j]! / den : i === j ? 1 : 0;
      }
    return out;
  }

  /** Mean routing entropy per token in nats (null when the router reports no distribution). */
  meanEntropy(): number | null {
    return this.entropyTokens > 0 ? this.entropySum / this.entropyTokens : null;
  }

  /** Fraction of assignments each expert received: count / Σ count. */
  load(): Float64Array {
    const total = this.count.reduce((a, b) => a + b, 0);
    return this.count.map((c) => (total > 0 ? c / total : 0));
  }
}

export interface ObserverOptions {
  /** Run every routed token through its experts a second time to get ‖f_e(x)‖ (default true). */
  outputs?: boolean;
  /** Accumulate inSqGated [E, d] (MoE-Pruner; default true). */
  inputs?: boolean;
  /** Accumulate hiddenSqGated [E, h] for mlp / glu banks (MoE-Pruner's W2; default false: one more expert pass). */
  hidden?: boolean;
}

/** EASY-EP's token weight 1 − cos(h, h + r), clamped to [0, 2]; 0 when either vector is zero (no direction to compare). */
export function easyTokenWeight(h: ArrayLike<number>, r: ArrayLike<number>): number {
  let hh = 0;
  let hs = 0;
  let ss = 0;
  for (let i = 0; i < h.length; i++) {
    const a = h[i]!;
    const b = a + r[i]!;
    hh += a * a;
    hs += a * b;
    ss += b * b;
  }
  const den = Math.sqrt(hh * ss);
  if (!(den > 0)) return 0;
  return Math.min(2, Math.max(0, 1 - hs / den));
}

/** Sum of a tensor-free helper: row entropies of p [T, E] (rows renormalised; all-zero rows give null). */
function rowEntropy(p: ArrayLike<number>, row: number, E: number): number | null {
  let z = 0;
  for (let e = 0; e < E; e++) z += p[row * E + e]!;
  if (!(z > 0)) return null;
  let h = 0;
  for (let e = 0; e < E; e++) {
    const q = p[row * E + e]! / z;
    if (q > 0) h -= q * Math.log(q);
  }
  return h;
}

export class RoutingObserver {
  readonly layers = new Map<string, LayerStats>();
  private readonly outputs: boolean;
  private readonly inputs: boolean;
  private readonly hidden: boolean;
  /** The residual stream of the layer call about to run, by layer path ([T, d], kept until its route event). */
  private readonly residuals = new Map<string, tf.Tensor2D>();

  constructor(options: ObserverOptions = {}) {
    this.outputs = options.outputs ?? true;
    this.inputs = options.inputs ?? true;
    this.hidden = options.hidden ?? false;
  }

  /** The statistics of one layer, by path (with a clear error naming the observed layers). */
  layer(path: string): LayerStats {
    const s = this.layers.get(path);
    if (!s) throw new MoelabError(`no routing statistics for layer "${path}"; observed layers: ${[...this.layers.keys()].join(', ') || 'none'}`);
    return s;
  }

  /**
   * The forward-context fields that make one forward pass report to this observer. Pass the context to
   * `model.forward` (or `forwardCached`), then call `finish(ctx, tag)`.
   */
  hooks(tag: ObserveTag = {}): Partial<ForwardContext> & { observed: Set<string> } {
    const observed = new Set<string>();
    return {
      moeObserver: (event) => this.onRoute(event, tag, observed),
      ...(this.outputs ? { ffnResidualObserver: (layer: string, h: tf.Tensor) => this.onResidual(layer, h) } : {}),
      observed,
    };
  }

  private onResidual(layer: string, h: tf.Tensor): void {
    this.residuals.get(layer)?.dispose();
    const d = h.shape[h.shape.length - 1]!;
    this.residuals.set(layer, tf.keep(tf.reshape(h, [-1, d]) as tf.Tensor2D));
  }

  /** Folds in the per-call counts of layers that did not report details (MONET, PEER, FFF, mixing routers). */
  finish(ctx: ForwardContext, tag: ObserveTag, observed: Set<string>): void {
    for (const h of this.residuals.values()) h.dispose();
    this.residuals.clear();
    const pads = tag.valid ? Array.prototype.some.call(tag.valid, (v: number) => !v) : false;
    for (const s of ctx.routing) {
      if (observed.has(s.layer)) continue;
      if (pads)
        throw new MoelabError(`layer "${s.layer}" reports only per-call expert counts, so padding rows cannot be excluded from its statistics`, s.layer);
      this.addCounts(s, tag);
    }
  }

  /** One forward pass of `model` over token ids [B, T] in eval mode, observed. Returns nothing (no tensors kept). */
  observe(model: Module & LanguageModel, ids: tf.Tensor2D, tag: ObserveTag = {}): void {
    const { observed, ...extra } = this.hooks(tag);
    const ctx = forwardContext(new Rng(0), false, extra);
    tf.tidy(() => {
      model.forward(ids, ctx);
    });
    this.finish(ctx, tag, observed);
  }

  /**
   * Observed forward pass over windows [B, T+1] that also returns the summed next-token cross-entropy
   * (over valid targets) and the number of targets: calibration and evaluation in one pass.
   */
  observeLoss(model: Module & LanguageModel, windows: tf.Tensor2D, tag: ObserveTag = {}): { sum: number; tokens: number } {
    const [B, T1] = windows.shape;
    const { observed, ...extra } = this.hooks(tag);
    const ctx = forwardContext(new Rng(0), false, extra);
    const sum = tf.tidy(() => {
      const logits = model.forward(tf.slice(windows, [0, 0], [B, T1 - 1]), ctx);
      return crossEntropy(logits, tf.slice(windows, [0, 1], [B, T1 - 1])).dataSync()[0]! * B * (T1 - 1);
    });
    this.finish(ctx, tag, observed);
    return { sum, tokens: B * (T1 - 1) };
  }

  private stats(layer: string, E: number): LayerStats {
    let s = this.layers.get(layer);
    if (!s) {
      s = new LayerStats(layer, E);
      this.layers.set(layer, s);
    }
    if (s.numExperts !== E) throw new MoelabError(`layer reported ${E} experts after ${s.numExperts}`, layer);
    return s;
  }

  private tagged(s: LayerStats, tag: ObserveTag, counts: ArrayLike<number>, tokens: number): void {
    const E = s.numExperts;
    const add = <K>(countMap: Map<K, Float64Array>, tokenMap: Map<K, number>, key: K) => {
      let row = countMap.get(key);
      if (!row) {
        row = new Float64Array(E);
        countMap.set(key, row);
      }
      for (let e = 0; e < E; e++) row[e]! += counts[e]!;
      tokenMap.set(key, (tokenMap.get(key) ?? 0) + tokens);
    };
    if (tag.domain !== undefined) add(s.domainCounts, s.domainTokens, tag.domain);
    add(s.phaseCounts, s.phaseTokens, tag.phase ?? 'prefill');
  }

  private addCounts(r: RoutingStats, tag: ObserveTag): void {
    const s = this.stats(r.layer, r.numExperts);
    const c = r.intendedCounts ?? r.counts;
    s.tokens += r.tokens;
    for (let e = 0; e < s.numExperts; e++) {
      s.count[e]! += c[e]!;
      s.coact[e * s.numExperts + e]! += c[e]!;
    }
    this.tagged(s, tag, c, r.tokens);
  }

  private onRoute(ev: MoERouteEvent, tag: ObserveTag, observed: Set<string>): void {
    observed.add(ev.layer);
    const residual = this.residuals.get(ev.layer);
    this.residuals.delete(ev.layer);
    try {
      this.route(ev, tag, residual);
    } finally {
      residual?.dispose();
    }
  }

  private route(ev: MoERouteEvent, tag: ObserveTag, residual: tf.Tensor2D | undefined): void {
    const { x, plan, routed } = ev;
    const T = x.shape[0];
    const E = plan.numExperts;
    const s = this.stats(ev.layer, E);
    s.detailed = true;
    const valid = tag.valid;
    if (valid && valid.length !== T) throw new MoelabError(`the padding mask has ${valid.length} entries but the layer saw ${T} token rows`, ev.layer);
    const ok = (t: number) => valid?.[t] !== 0;
    let nValid = 0;
    for (let t = 0; t < T; t++) if (ok(t)) nValid++;
    s.tokens += nValid;

    // Intended assignments (before capacity and masks) per domain / phase, like `RoutingStats.intendedCounts`.
    const intended = new Float64Array(E);
    for (let n = 0; n < routed.plan.size; n++) if (ok(routed.plan.tokenIndex[n]!)) intended[routed.plan.expertIndex[n]!]! += 1;
    this.tagged(s, tag, intended, nValid);

    // What the experts ran: counts, gate sums, co-activation.
    const g = ev.weight ? (ev.weight.dataSync() as Float32Array) : null;
    const keep: number[] = [];
    const perToken = new Map<number, number[]>();
    for (let n = 0; n < plan.size; n++) {
      const t = plan.tokenIndex[n]!;
      if (!ok(t)) continue;
      const e = plan.expertIndex[n]!;
      keep.push(n);
      s.count[e]! += 1;
      s.gateSum[e]! += g ? g[n]! : 1;
      const list = perToken.get(t);
      if (list) list.push(e);
      else perToken.set(t, [e]);
    }
    for (const list of perToken.values()) for (const i of list) for (const j of list) s.coact[i * E + j]! += 1;

    // Router logits and distribution.
    if (routed.logits) {
      const z = routed.logits.dataSync();
      for (let t = 0; t < T; t++) {
        if (!ok(t)) continue;
        s.logitTokens++;
        for (let i = 0; i < E; i++) {
          const zi = z[t * E + i]!;
          s.logitSum[i]! += zi;
          for (let j = 0; j < E; j++) s.logitGram[i * E + j]! += zi * z[t * E + j]!;
        }
      }
    }
    if (routed.probs) {
      const p = routed.probs.dataSync();
      for (let t = 0; t < T; t++) {
        if (!ok(t)) continue;
        const h = rowEntropy(p, t, E);
        if (h === null) continue;
        s.entropySum += h;
        s.entropyTokens++;
      }
    }

    // Expert outputs: every kept assignment becomes its own row, so one call of the bank returns
    // f_{e_n}(x_{t_n}) for every assignment n.
    if (keep.length === 0 || (!this.outputs && !this.inputs)) return;
    const N = keep.length;
    const tok = Int32Array.from(keep, (n) => plan.tokenIndex[n]!);
    const ex = Int32Array.from(keep, (n) => plan.expertIndex[n]!);
    const gate = Float64Array.from(keep, (n) => (g ? g[n]! : 1));
    tf.tidy(() => {
      const xs = tf.gather(x, tf.tensor1d(tok, 'int32')) as tf.Tensor2D;
      if (this.inputs) {
        const d = x.shape[1];
        if (!s.inSqGated) {
          s.inSqGated = new Float64Array(E * d);
          s.inputDim = d;
        }
        const xv = xs.dataSync();
        for (let n = 0; n < N; n++) {
          const e = ex[n]!;
          const g2 = gate[n]! * gate[n]!;
          const row = e * d;
          for (let j = 0; j < d; j++) {
            const v = xv[n * d + j]!;
            s.inSqGated[row + j]! += g2 * v * v;
          }
        }
      }
      if (this.hidden && isMlpBank(ev.experts)) {
        const u = mlpHidden(ev.experts, xs, ex, ev.layer);
        const h = u.shape[1];
        if (!s.hiddenSqGated) {
          s.hiddenSqGated = new Float64Array(E * h);
          s.hiddenDim = h;
        }
        const uv = u.dataSync();
        for (let n = 0; n < N; n++) {
          const g2 = gate[n]! * gate[n]!;
          const row = ex[n]! * h;
          for (let i = 0; i < h; i++) {
            const v = uv[n * h + i]!;
            s.hiddenSqGated[row + i]! += g2 * v * v;
          }
        }
      }
      if (!this.outputs) return;
      const rows = Int32Array.from({ length: N }, (_, n) => n);
      const y = ev.experts.apply(xs, new DispatchPlan(rows, ex, N, E), null, ev.ctx);
      const norms = tf.norm(y, 'euclidean', 1).dataSync();
      const maxAbs = tf.max(tf.abs(y), 1).dataSync();
      // EASY-EP: r_t = Σ_{e∈S_t} g_{t,e} f_e(x_t), compared with the residual stream h_t.
      let weightOf: ((t: number) => number) | null = null;
      if (residual && residual.shape[0] === T) {
        const r = tf.unsortedSegmentSum(tf.mul(y, tf.tensor2d(Float32Array.from(gate), [N, 1])), tf.tensor1d(tok, 'int32'), T).dataSync();
        const hv = residual.dataSync();
        const d = residual.shape[1];
        const w = new Float64Array(T);
        for (const t of new Set(tok)) {
          w[t] = easyTokenWeight(hv.subarray(t * d, (t + 1) * d), r.subarray(t * d, (t + 1) * d));
          s.easyTokens++;
        }
        weightOf = (t) => w[t]!;
      }
      for (let n = 0; n < N; n++) {
        const e = ex[n]!;
        const norm = norms[n]!;
        s.outNormSum[e]! += norm;
        s.reapSum[e]! += gate[n]! * norm;
        if (weightOf) s.easySum[e]! += gate[n]! * norm * weightOf(tok[n]!);
        if (maxAbs[n]! > s.maxAbsOut[e]!) s.maxAbsOut[e] = maxAbs[n]!;
      }
    });
  }
}
