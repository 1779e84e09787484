/**
 * Low-rank maps, the building block of LoRA-type adapters:
 *
 *   LR(x; A, B) = s · B (A x),   A ∈ R^{r×d_in},  B ∈ R^{d_out×r},  s = α / r
 *
 * Initialisation (docs/finetune.md#identity-at-init): A kaiming-uniform with a = √5, i.e. U(±1/√d_in)
 * (PyTorch's Linear default, what LoRA uses); B = 0 exactly, so the adapted model equals the base at step
 * 0, or `normal(1e-6)`: B ~ N(0, 1e-6²) as in the PERFT reference code. A stack of M maps keeps
 * A as [M, r, d_in] and B as [M, d_out, r]; Σ_m w_m B_m A_m x is then one product through the
 * concatenations A_cat [M·r, d_in], B_cat [d_out, M·r].
 */
import { MoelabError, type Rng, Type, tf } from '@moelab/core';

export const INIT_B = ['zero', 'normal(1e-6)'] as const;
export type InitB = (typeof INIT_B)[number];

/** The `initB` option of every LoRA-type adapter. */
export const initBOption = () =>
  Type.Union(
    INIT_B.map((v) => Type.Literal(v)),
    { default: 'zero', description: "B's initialisation: zero (output = base exactly at init) or normal(1e-6) (the PERFT reference code)" },
  );

/** U(±1/√d_in): kaiming-uniform with a = √5 on a [r, d_in] weight. */
export function kaimingUniform(rng: Rng, n: number, fanIn: number): Float32Array {
  const bound = 1 / Math.sqrt(fanIn);
  return rng.uniformArray(n, -bound, bound);
}

export function initBValues(rng: Rng, n: number, init: InitB): Float32Array {
  return init === 'zero' ? new Float32Array(n) : rng.normalArray(n, 1e-6);
}

/** Refuse a rank the layer cannot hold: r ≤ min(d_in, d_out). */
export function checkRank(rank: number, dIn: number, dOut: number, where: string): void {
  if (rank > Math.min(dIn, dOut))
    throw new MoelabError(`rank ${rank} exceeds the width of this layer (${dIn} -> ${dOut}): a low-rank update needs rank <= ${Math.min(dIn, dOut)}`, where);
}

/** x [N, d_in] through M stacked maps -> the per-map bottleneck h [N, M·r] = x A_catᵀ. */
export function downProject(x: tf.Tensor2D, A: tf.Tensor): tf.Tensor2D {
  const [M, r, dIn] = A.shape as [number, number, number];
  return tf.matMul(x, tf.reshape(A, [M * r, dIn]), false, true);
}

/** h [N, M·r] -> B_cat h [N, d_out], with B [M, d_out, r]. */
export function upProject(h: tf.Tensor2D, B: tf.Tensor): tf.Tensor2D {
  const [M, dOut, r] = B.shape as [number, number, number];
  const Bcat = tf.reshape(tf.transpose(B, [1, 0, 2]), [dOut, M * r]);
  return tf.matMul(h, Bcat, false, true);
}

/** Weight each map's r bottleneck units of h [N, M·r] by w [N, M]. */
export function weightBottleneck(h: tf.Tensor2D, w: tf.Tensor2D, rank: number): tf.Tensor2D {
  const [N, M] = w.shape;
  return tf.reshape(tf.mul(tf.reshape(h, [N, M, rank]), tf.reshape(w, [N, M, 1])), [N, M * rank]);
}
