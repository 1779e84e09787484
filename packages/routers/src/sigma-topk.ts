/**
 * Sigma top-k router: the router of sigma-MoE and MoEUT (Csordás et al. 2023, 2024;
 * arXiv 2310.10837, 2405.16039): docs/routers.md#sigma-topk, in depth docs/moeut.md#sigma-moe-feed-forward.
 *
 *   l = W s                                  W = `expert_sel` [E, d], s = the router input
 *   S = top-k(l)                             (= top-k of σ(l); training-time expert dropout masks l first)
 *   g_e = σ(l_e)  for e in S                 sigmoid gates: NOT renormalised, no softmax over the top-k
 *
 * Balancing regulariser (docs/moeut.md#the-entropy-regulariser): from the raw logits, p = softmax(l) per token,
 * p̄ = mean of p over an averaging group, reg = -mean over groups of H(p̄) (added with `balanceCoef`).
 *   - `balance: "sequence"` (MoEUT, `layers_time`): a group is one sequence, i.e. all T positions of every
 *     call of this router in the forward pass: a layer shared by R repeats is averaged over T·R positions,
 *     and computed once (in `finalizeForward`, which the language model calls after all layers).
 *   - `balance: "global"` (sigma-MoE paper, `moe_layer`): one group of every token of the batch (all calls).
 *   - `balance: "none"`.
 * Only in training mode, like MoEUT (its reg is 0 in eval). The parameter is named `expert_sel` as in the
 * official state_dict. Init: N(0, (initScale/√d)²), then rows renormalised to equal norm keeping the
 * global std; initScale defaults to √(2/L) with L the model's unrolled depth (1 outside a model).
 */
import {
  Config,
  defineEntry,
  editRouterLogits,
  ensureCarry,
  entropyBalanceReg,
  type ForwardContext,
  Module,
  MoelabError,
  privateCarryKey,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  readCarry,
  takeCarry,
  Type,
  tf,
} from '@moelab/core';
import { checkK, kSchema, sigmoidTopKGate } from './common.js';

export type BalanceMode = 'sequence' | 'global' | 'none';

export interface SigmaTopKOptions {
  k: number;
  /** Probability of masking each (token, expert) logit before top-k in training (sigma-MoE paper: 0.05-0.1; MoEUT: 0). */
  expertDropout: number;
  balance: BalanceMode;
  balanceCoef: number;
  /** `std_scale` of the init; default √(2 / nLayers) inside a model, else 1. */
  initScale?: number;
}

/** `renorm_keep_std` of the official code: every row gets the same L2 norm, the global (unbiased) std is kept. */
export function renormRowsKeepStd(w: Float32Array, rows: number, cols: number): Float32Array {
  const std = (a: Float32Array) => {
    let m = 0;
    for (const v of a) m += v;
    m /= a.length;
    let s = 0;
    for (const v of a) s += (v - m) ** 2;
    return Math.sqrt(s / Math.max(1, a.length - 1));
  };
  const std0 = std(w);
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    let n = 0;
    for (let c = 0; c < cols; c++) n += w[r * cols + c]! ** 2;
    n = Math.sqrt(n) || 1;
    for (let c = 0; c < cols; c++) out[r * cols + c] = w[r * cols + c]! / n;
  }
  const f = std0 / (std(out) || 1);
  for (let i = 0; i < out.length; i++) out[i]! *= f;
  return out;
}

/** Expert-dropout mask: 1 where a (token, expert) logit is dropped. */
function dropMask(rng: Rng, n: number, p: number): Uint8Array {
  const m = new Uint8Array(n);
  for (let i = 0; i < n; i++) m[i] = rng.next() < p ? 1 : 0;
  return m;
}

/** One training call's router logits [batch·time, E], with the [batch, time] layout they came in. */
interface SigmaTopKCall {
  logits: tf.Tensor2D;
  batch: number;
  time: number;
}

export class SigmaTopKRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  /** Where this router keeps the logits of its calls in the current forward pass (training only), for the regulariser. */
  private readonly callsKey = privateCarryKey<SigmaTopKCall[]>('sigma-topk');

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: SigmaTopKOptions,
    rng: Rng,
  ) {
    super();
    if (options.k > numExperts) throw new MoelabError(`k = ${options.k} exceeds the number of experts (${numExperts})`);
    const scale = options.initScale ?? 1;
    const w = rng.normalArray(numExperts * dModel, scale / Math.sqrt(dModel));
    this.weight = this.param('expert_sel', renormRowsKeepStd(w, numExperts, dModel), [numExperts, dModel]);
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  /** Raw router logits [N, E] = x W^T. */
  logits(x: tf.Tensor2D): tf.Tensor2D {
    return tf.matMul(x, this.weight, false, true) as tf.Tensor2D;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const { k, expertDropout } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = editRouterLogits(ctx, this.path, this.logits(x));
    if (ctx.training && this.options.balance !== 'none' && this.options.balanceCoef !== 0) this.record(logits, ctx, info);
    // Expert dropout: a dropped logit reads as -Infinity for the selection, which never chooses it,
    // so a token left with fewer than k experts makes fewer choices. The gates are σ of the chosen
    // logits only (N values instead of T x E, forward and backward): on moelab-cpu one fused kernel.
    let select: Float32Array | undefined;
    if (ctx.training && expertDropout > 0) {
      const dropped = dropMask(ctx.rng, T * E, expertDropout);
      select = Float32Array.from(logits.dataSync());
      for (let i = 0; i < select.length; i++) if (dropped[i]) select[i] = Number.NEGATIVE_INFINITY;
    }
    const { plan, weight } = sigmoidTopKGate(logits, k, select);
    // softmax(l) only for whoever reads it (the routing statistics or an observer of the layer).
    return { plan, weight, probs: ctx.stats !== false || ctx.moeObserver ? (tf.softmax(logits) as tf.Tensor2D) : undefined };
  }

  private record(logits: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): void {
    const lead = info?.batchShape ?? [logits.shape[0]];
    const time = lead.length >= 2 ? lead[lead.length - 1]! : logits.shape[0];
    ensureCarry(ctx, this.callsKey, () => []).push({ logits, batch: logits.shape[0] / time, time });
  }

  /** The unscaled regulariser over the calls recorded in this forward pass (null if none). */
  regularizer(ctx: ForwardContext): tf.Scalar | null {
    const calls = readCarry(ctx, this.callsKey);
    if (!calls?.length) return null;
    const E = this.numExperts;
    let grouped: tf.Tensor3D;
    if (this.options.balance === 'global') {
      grouped = tf.reshape(
        tf.concat(
          calls.map((c) => c.logits),
          0,
        ),
        [1, -1, E],
      ) as tf.Tensor3D;
    } else {
      const B = calls[0]!.batch;
      if (calls.some((c) => c.batch !== B)) throw new MoelabError('calls of one forward pass have different batch sizes', this.path || undefined);
      grouped = tf.concat(
        calls.map((c) => tf.reshape(c.logits, [B, c.time, E])),
        1,
      ) as tf.Tensor3D;
    }
    return entropyBalanceReg(grouped);
  }

  override finalizeForward(ctx: ForwardContext): void {
    const reg = this.regularizer(ctx);
    takeCarry(ctx, this.callsKey);
    if (reg) ctx.aux.push({ name: 'entropy_balance', layer: this.path, value: reg, coef: this.options.balanceCoef });
  }
}

export const balanceSchema = Type.Union([Type.Literal('sequence'), Type.Literal('global'), Type.Literal('none')], {
  default: 'sequence',
  description: 'entropy regulariser: per sequence over time x repeats (MoEUT), over all tokens (sigma-MoE paper), or none',
});

export const sigmaTopK = defineEntry({
  kind: 'router',
  name: 'sigma-topk',
  description: 'Sigmoid gates, top-k on logits, no renormalisation (sigma-MoE / MoEUT); entropy balancing per sequence or global, expert dropout.',
  reference: 'docs/routers.md#sigma-topk, docs/moeut.md#sigma-moe-feed-forward; arXiv 2310.10837, 2405.16039',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: kSchema(4),
    expertDropout: Type.Number({
      minimum: 0,
      exclusiveMaximum: 1,
      default: 0,
      description: 'training-time probability of masking each (token, expert) before top-k',
    }),
    balance: balanceSchema,
    balanceCoef: Type.Number({ minimum: 0, default: 0.01, description: 'weight of the entropy regulariser (MoEUT γ = 0.01; sigma-MoE paper 1e-4 to 1e-3)' }),
    initScale: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'init std scale; default √(2 / layers)' })),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    const L = ctx.env.nLayers as number | undefined;
    return new SigmaTopKRouter(ctx.need('dModel'), E, { ...c, initScale: c.initScale ?? (L ? Math.sqrt(2 / L) : 1) }, ctx.rng);
  },
});
