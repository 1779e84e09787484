/**
 * Building blocks the routers of this package share (docs/routers.md#the-router-contract,
 * docs/routers.md#weighting-rules): selection on plain
 * arrays (routing decisions are discrete and never need gradients), slot-major dispatch plans,
 * differentiable gathering of the chosen scores, per-token renormalisation, input jitter, and the
 * aux-loss-free bias controller. Not a registry entry.
 */
import {
  DispatchPlan,
  type ForwardContext,
  hasKernel,
  MoelabError,
  type Rng,
  SIGMOID_TOPK_KERNEL,
  type SigmoidTopKAttrs,
  type SigmoidTopKInputs,
  SOFTMAX_TOPK_KERNEL,
  type SoftmaxTopKAttrs,
  type SoftmaxTopKInputs,
  Type,
  tf,
} from '@moelab/core';

/**
 * Indices of the k largest entries of each row of `v` [T, E] (token-major [T*k], descending; ties: the
 * lower index first, like tf.topk). Entries equal to -Infinity are never chosen: their slot is -1.
 */
export function topkRows(v: ArrayLike<number>, T: number, E: number, k: number): Int32Array {
  const out = new Int32Array(T * k).fill(-1);
  // One pass per row keeping the best k so far, sorted: an entry moves ahead only of strictly
  // smaller ones, so among equal values the lower index (seen first) stays ahead.
  const bestV = new Float64Array(k);
  const bestI = new Int32Array(k);
  for (let t = 0; t < T; t++) {
    const row = t * E;
    let n = 0;
    for (let e = 0; e < E; e++) {
      const val = v[row + e]!;
      if (!(val > Number.NEGATIVE_INFINITY)) continue; // -Infinity and NaN are never chosen
      if (n === k && !(val > bestV[k - 1]!)) continue;
      let p = n < k ? n++ : k - 1;
      while (p > 0 && val > bestV[p - 1]!) {
        bestV[p] = bestV[p - 1]!;
        bestI[p] = bestI[p - 1]!;
        p--;
      }
      bestV[p] = val;
      bestI[p] = e;
    }
    for (let s = 0; s < n; s++) out[t * k + s] = bestI[s]!;
  }
  return out;
}

/** A slot-major plan (every token's first choice before any second choice) from token-major choices [T*K] (-1 = none). */
export function planFromChoices(choices: Int32Array, T: number, K: number, E: number): { plan: DispatchPlan; flat: Int32Array; slot: Int32Array } {
  let N = 0;
  for (let i = 0; i < T * K; i++) if (choices[i]! >= 0) N++;
  const tok = new Int32Array(N);
  const ex = new Int32Array(N);
  const slot = new Int32Array(N);
  const flat = new Int32Array(N);
  let n = 0;
  for (let s = 0; s < K; s++)
    for (let t = 0; t < T; t++) {
      const e = choices[t * K + s]!;
      if (e < 0) continue;
      tok[n] = t;
      ex[n] = e;
      slot[n] = s;
      flat[n++] = t * E + e;
    }
  return { plan: new DispatchPlan(tok, ex, T, E), flat, slot };
}

/**
 * Up to this many assignments, with no gradient being recorded (inference: a decoding step routes
 * one token per call), gatherAt and renormPerToken compute on plain arrays: the same float32 values
 * as their ops, one small tensor instead of three to five kernels. Larger calls keep the ops (on a GPU
 * backend reading the scores back would cost more than the kernels).
 */
const PLAIN_ARRAY_ASSIGNMENTS = 64;
const onPlainArrays = (assignments: number) => assignments <= PLAIN_ARRAY_ASSIGNMENTS && !tf.engine().isTapeOn();

/** scores[t, e] for each assignment (t, e) given as flat indices t*E+e: differentiable w.r.t. scores. */
export function gatherAt(scores: tf.Tensor2D, flat: Int32Array): tf.Tensor1D {
  if (onPlainArrays(flat.length)) {
    const s = scores.dataSync();
    const out = new Float32Array(flat.length);
    for (let n = 0; n < flat.length; n++) out[n] = s[flat[n]!]!;
    return tf.tensor1d(out);
  }
  return tf.gather(tf.reshape(scores, [-1]), tf.tensor1d(flat, 'int32')) as tf.Tensor1D;
}

/** w[n] / sum of w over the assignments of the same token (differentiable). */
export function renormPerToken(w: tf.Tensor1D, plan: DispatchPlan, eps = 0): tf.Tensor1D {
  if (onPlainArrays(plan.size)) {
    // float32 throughout, as moelab-cpu's kernels compute it: each stored partial sum and quotient
    // rounds to float32 (a backend that sums a token's weights in double may differ in the last bit
    // when it has more than two).
    const v = w.dataSync();
    const sums = new Float32Array(plan.numTokens);
    for (let n = 0; n < plan.size; n++) sums[plan.tokenIndex[n]!]! += v[n]!;
    const e = Math.fround(eps);
    const out = new Float32Array(plan.size);
    for (let n = 0; n < plan.size; n++) out[n] = v[n]! / Math.fround(sums[plan.tokenIndex[n]!]! + e);
    return tf.tensor1d(out);
  }
  const tok = plan.tokenIndexTensor();
  const sums = tf.unsortedSegmentSum(w, tok, plan.numTokens);
  return tf.div(w, tf.add(tf.gather(sums, tok), eps)) as tf.Tensor1D;
}

/** What {@link softmaxTopKGate} returns. */
export interface SoftmaxTopKGate {
  plan: DispatchPlan;
  /** Flat index t*E+e of each assignment, in plan order. */
  flat: Int32Array;
  /** Token-major choices [T*k] (-1 = none), as {@link topkRows} returns them. */
  choices: Int32Array;
  /** Combine weight of each assignment, differentiable w.r.t. the scores. */
  weight: tf.Tensor1D;
  /** softmax(scores) [T, E], when the gate computed it on the way (the op-by-op path). */
  probs?: tf.Tensor2D;
}

/**
 * The softmax top-k gate: p = softmax(scores), each token's experts = top-k(scores + bias) (bias:
 * selection only), weight = p_e / Σ_{chosen} p (renormalize) or p_e. On a backend with the fused
 * SOFTMAX_TOPK_KERNEL (moelab-cpu) one kernel forward and one backward; elsewhere softmax, selection
 * on plain arrays, a gather and the per-token renormalisation as tfjs ops. Same plan and weights.
 */
export function softmaxTopKGate(scores: tf.Tensor2D, k: number, renormalize: boolean, bias?: tf.Tensor1D): SoftmaxTopKGate {
  const [T, E] = scores.shape;
  if (hasKernel(SOFTMAX_TOPK_KERNEL)) {
    const [w, ex] = tf
      .engine()
      .runKernel(
        SOFTMAX_TOPK_KERNEL,
        { scores, bias: bias ?? tf.zeros([0]) } satisfies SoftmaxTopKInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
        { k, renormalize } satisfies SoftmaxTopKAttrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor[];
    return gateFromSlots(w!, ex!, T, k, E);
  }
  const probs = tf.softmax(scores) as tf.Tensor2D;
  const select = bias ? tf.add(scores, bias) : scores;
  const choices = topkRows(select.dataSync(), T, E, k);
  const { plan, flat } = planFromChoices(choices, T, k, E);
  let weight = gatherAt(probs, flat);
  if (renormalize) weight = renormPerToken(weight, plan);
  return { plan, flat, choices, weight, probs };
}

/**
 * The plan and weights from a fused gate's slot-major outputs: w float32 and ex int32 [k, T], ex -1
 * (and w 0) in a slot without a choice. The plan is slot-major too, so the weights line up with it
 * as they are unless some slot is empty (a row with fewer than k finite scores).
 */
function gateFromSlots(w: tf.Tensor, ex: tf.Tensor, T: number, k: number, E: number): Omit<SoftmaxTopKGate, 'probs'> {
  const slots = ex.dataSync() as Int32Array;
  const choices = new Int32Array(T * k);
  for (let s = 0; s < k; s++) for (let t = 0; t < T; t++) choices[t * k + s] = slots[s * T + t]!;
  const { plan, flat } = planFromChoices(choices, T, k, E);
  let weight = tf.reshape(w, [-1]) as tf.Tensor1D;
  if (plan.size < T * k) {
    const kept = new Int32Array(plan.size);
    let n = 0;
    for (let i = 0; i < T * k; i++) if (slots[i]! >= 0) kept[n++] = i;
    weight = tf.gather(weight, tf.tensor1d(kept, 'int32')) as tf.Tensor1D;
  }
  return { plan, flat, choices, weight };
}

/**
 * The sigmoid top-k gate of sigma-MoE / MoEUT: each token's experts = top-k(scores) (ties: the lower
 * index first; -Infinity and NaN never chosen), weight = sigmoid of each chosen score, not
 * renormalised. On a backend with the fused SIGMOID_TOPK_KERNEL (moelab-cpu) one kernel forward and
 * one backward that writes only the chosen scores' gradients; elsewhere the selection on plain
 * arrays and sigmoid(gather) of the chosen scores. `select`, when given, replaces the scores for the
 * selection only (expert dropout: the dropped entries set to -Infinity); the fused kernel is then
 * not used.
 */
export function sigmoidTopKGate(scores: tf.Tensor2D, k: number, select?: ArrayLike<number>): Omit<SoftmaxTopKGate, 'probs'> {
  const [T, E] = scores.shape;
  if (!select && hasKernel(SIGMOID_TOPK_KERNEL)) {
    const [w, ex] = tf
      .engine()
      .runKernel(
        SIGMOID_TOPK_KERNEL,
        { scores } satisfies SigmoidTopKInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
        { k } satisfies SigmoidTopKAttrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor[];
    return gateFromSlots(w!, ex!, T, k, E);
  }
  const choices = topkRows(select ?? scores.dataSync(), T, E, k);
  const { plan, flat } = planFromChoices(choices, T, k, E);
  return { plan, flat, choices, weight: tf.sigmoid(gatherAt(scores, flat)) as tf.Tensor1D };
}

/** Dense [T, E] matrix with w[n] at (t_n, e_n) and 0 elsewhere (differentiable w.r.t. w). */
export function densify(w: tf.Tensor1D, flat: Int32Array, T: number, E: number): tf.Tensor2D {
  return tf.reshape(tf.unsortedSegmentSum(w, tf.tensor1d(flat, 'int32'), T * E), [T, E]) as tf.Tensor2D;
}

/** Multiplicative input jitter x * U(1 - eps, 1 + eps) (Switch, mesh-TF `input_jitter`), training only. */
export function jitter(x: tf.Tensor2D, eps: number, ctx: ForwardContext): tf.Tensor2D {
  if (!ctx.training || eps <= 0) return x;
  return tf.mul(x, tf.tensor2d(ctx.rng.uniformArray(x.size, 1 - eps, 1 + eps), x.shape)) as tf.Tensor2D;
}

/** Standard normal noise [T, E] from the forward RNG. */
export function gaussian(rng: Rng, T: number, E: number, std = 1): tf.Tensor2D {
  return tf.tensor2d(rng.normalArray(T * E, std), [T, E]);
}

/** The `k` field of a top-k router's schema: an integer >= 1 with the router's default. */
export function kSchema(dflt: number, description = 'experts per token') {
  return Type.Integer({ minimum: 1, default: dflt, description });
}

/** Throws the standard "k exceeds experts" error at the node's `k` path. */
export function checkK(k: number, E: number, path: string, key = 'k'): void {
  if (k > E) throw new MoelabError(`${key} = ${k} exceeds the number of experts (${E})`, `${path}.${key}`);
}

/** Rows [T] split into sequences: `info.batchShape` [B, T] gives B sequences of T rows; otherwise one. */
export function sequenceLayout(rows: number, batchShape?: number[]): { B: number; T: number } {
  const T = batchShape && batchShape.length >= 2 ? batchShape[batchShape.length - 1]! : rows;
  return { B: Math.max(1, Math.round(rows / T)), T };
}

// ---------------------------------------------------------------------------------------------------
// Aux-loss-free bias balancing (DeepSeek Loss-Free Balancing / V3; docs/routers.md#aux-loss-free-bias-balancing)

export const biasSchema = {
  expertBias: Type.Boolean({
    default: false,
    description: 'aux-loss-free balancing: a bias buffer added to the scores for selection only, updated after each optimiser step',
  }),
  biasUpdateRate: Type.Number({ minimum: 0, default: 1e-3, description: 'u in b_e += u * sign(mean_j c_j - c_e) (loss-free paper, Megatron: 1e-3)' }),
};

/**
 * The bias controller: accumulates per-expert assignment counts over the training forward passes of
 * one optimiser step (all micro-batches), then `update()` applies b_e += u * sign(mean_j c_j - c_e).
 * The bias shifts selection only; it never enters a combine weight and has no gradient.
 */
export class BiasController {
  private counts: Float64Array;
  private updates = 0;
  private flips = 0;
  private lastSign: Int8Array;

  constructor(
    readonly bias: tf.Variable,
    readonly rate: number,
  ) {
    const E = bias.shape[0]!;
    this.counts = new Float64Array(E);
    this.lastSign = new Int8Array(E);
  }

  /** Selection scores s + b (same shape as s [T, E]); b is a buffer, so no gradient flows to it. */
  shift(scores: tf.Tensor2D): tf.Tensor2D {
    return tf.add(scores, this.bias) as tf.Tensor2D;
  }

  /** Record the intended assignments of a training forward pass. */
  record(plan: DispatchPlan, ctx: ForwardContext): void {
    if (!ctx.training) return;
    for (let e = 0; e < plan.numExperts; e++) this.counts[e]! += plan.counts[e]!;
  }

  /** Apply the sign update from the counts recorded since the last update (no-op if none). */
  update(): void {
    const c = this.counts;
    const E = c.length;
    let total = 0;
    for (let e = 0; e < E; e++) total += c[e]!;
    if (total === 0) return;
    const mean = total / E;
    const b = this.bias.dataSync();
    const next = new Float32Array(E);
    for (let e = 0; e < E; e++) {
      const sign = Math.sign(mean - c[e]!);
      if (this.updates > 0 && sign !== 0 && this.lastSign[e] !== 0 && sign !== this.lastSign[e]) this.flips++;
      if (sign !== 0) this.lastSign[e] = sign;
      next[e] = b[e]! + this.rate * sign;
    }
    this.bias.assign(tf.tensor1d(next));
    this.updates++;
    this.counts = new Float64Array(E);
  }

  /** min / max / mean of b and the fraction of per-expert updates that flipped sign (bias statistics of docs/metrics.md). */
  stats(): Record<string, number> {
    const b = this.bias.dataSync();
    let min = Number.POSITIVE_INFINITY;
    let max = Number.NEGATIVE_INFINITY;
    let s = 0;
    for (const v of b) {
      min = Math.min(min, v);
      max = Math.max(max, v);
      s += v;
    }
    const E = b.length;
    return { biasMin: min, biasMax: max, biasMean: s / E, biasFlipRate: this.updates > 1 ? this.flips / ((this.updates - 1) * E) : 0 };
  }
}

export interface BiasOptions {
  expertBias: boolean;
  biasUpdateRate: number;
}
