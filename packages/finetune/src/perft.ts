/**
 * What the PERFT adapters share (Liu et al., arXiv 2411.08212 / 2508.02587, docs/finetune.md#perft): M
 * "LoRA PEFT experts" d → d, Δ_m(x) = (α/r) · B_m A_m x, held stacked as A [M, r, d], B [M, d, r], and the
 * Switch-style balance loss of the PERFT-R router pooled over every layer of one adapter node:
 *
 *   aux = M · Σ_m F_m · P_m,   F_m = (top-K' selections of m) / N,   P_m = mean_t q_{t,m}
 *
 * over the N (token, layer) pairs of a forward pass, so Σ_m F_m = K' (the HF/Mixtral formulation the
 * reference code uses); only P carries a gradient.
 */
import { type CarryKey, dropout, type ForwardContext, MoelabError, readCarry, type Rng, type Tensor, takeCarry, Type, tf, writeCarry } from '@moelab/core';
import { type AdapterGroup, type AdapterSite, BlockParallelAdapter } from './adapter.js';
import { checkRank, downProject, type InitB, initBOption, initBValues, kaimingUniform, upProject, weightBottleneck } from './low-rank.js';

export interface LoRAExpertOptions {
  rank: number;
  /** Default 2r. */
  alpha?: number;
  dropout: number;
  initB: InitB;
}

/** Options every PERFT adapter has. */
export const loraExpertOptions = () => ({
  rank: Type.Integer({ minimum: 1, default: 8, description: 'r, the rank of each PEFT expert' }),
  alpha: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'α (default 2r, the PERFT scripts): each expert is scaled by α/r' })),
  dropout: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0, description: "dropout on the adapter's input (PERFT: 0.05)" }),
  initB: initBOption(),
});

/** M stacked LoRA experts d → d (parameters `lora_A` [M, r, d], `lora_B` [M, d, r]). */
export function loraExpertParams(
  param: (name: string, values: Float32Array, shape: number[]) => tf.Variable,
  M: number,
  d: number,
  o: LoRAExpertOptions,
  rng: Rng,
  where: string,
): { A: tf.Variable; B: tf.Variable; scale: number } {
  checkRank(o.rank, d, d, where);
  const r = o.rank;
  const A = param('lora_A', kaimingUniform(rng, M * r * d, d), [M, r, d]);
  const B = param('lora_B', initBValues(rng, M * d * r, o.initB), [M, d, r]);
  return { A, B, scale: (o.alpha ?? 2 * r) / r };
}

/** A block-parallel adapter made of M LoRA experts mixed with per-token weights w [N, M] (null: all 1). */
export abstract class PerftBlockAdapter extends BlockParallelAdapter {
  A!: tf.Variable;
  B!: tf.Variable;
  scale = 1;

  constructor(
    site: AdapterSite<'block-parallel'>,
    readonly experts: number,
    readonly options: LoRAExpertOptions,
    rng: Rng,
  ) {
    super(site.path);
    Object.assign(
      this,
      loraExpertParams((n, v, s) => this.param(n, v, s), experts, site.dModel, options, rng, site.path),
    );
  }

  /** Per-token expert weights [N, M], or null for an unweighted sum. */
  protected abstract weights(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D | null;

  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const w = this.weights(x, ctx);
    const xd = dropout(x, this.options.dropout, ctx.rng, ctx.training) as tf.Tensor2D;
    let h = downProject(xd, this.A);
    if (w) h = weightBottleneck(h, w, this.options.rank);
    return tf.mul(upProject(h, this.B), this.scale);
  }
}

/** What the PERFT-R modules of one adapter node gather during a forward pass (the pooled balance loss). */
interface BalanceCarry {
  counts: Float64Array;
  probSums: Tensor[];
  tokens: number;
  owner: string;
}

/** Record one layer's routing for the pooled balance loss (see the file header). */
export function recordBalance(ctx: ForwardContext, group: AdapterGroup, owner: string, probs: tf.Tensor2D, selected: Int32Array, K: number): void {
  const [N, M] = probs.shape;
  const key = group.carry as CarryKey<BalanceCarry>;
  let held = readCarry(ctx, key);
  if (!held) {
    held = { counts: new Float64Array(M), probSums: [], tokens: 0, owner };
    writeCarry(ctx, key, held);
  }
  if (held.counts.length !== M) throw new MoelabError(`balance loss: ${M} experts here, ${held.counts.length} in an earlier layer`, owner);
  for (let i = 0; i < N * K; i++) held.counts[selected[i]!]! += 1;
  held.probSums.push(tf.sum(probs, 0));
  held.tokens += N;
}

/** Push the pooled balance loss (once per forward pass: the owner module does it). */
export function finishBalance(ctx: ForwardContext, group: AdapterGroup, self: string, coef: number): void {
  const key = group.carry as CarryKey<BalanceCarry>;
  const held = readCarry(ctx, key);
  if (!held || held.owner !== self) return;
  takeCarry(ctx, key);
  const M = held.counts.length;
  const N = held.tokens;
  const F = tf.tensor1d(Float32Array.from(held.counts, (c) => c / N));
  const P = tf.div(tf.addN(held.probSums), N);
  ctx.aux.push({ name: 'perft_balance', layer: self, value: tf.mul(tf.sum(tf.mul(F, P)), M) as tf.Scalar, coef });
}
