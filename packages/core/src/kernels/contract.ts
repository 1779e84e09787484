/**
 * The fused-kernel contract: the one place that names the kernels core calls when a backend has
 * them, their inputs and attributes, and the numeric codes the native kernels take. Core's call
 * sites, @moelab/kernels-cpu (and any other backend: wasm, CUDA) import these constants instead of
 * repeating string and number literals; kernels-cpu's `contract.test.ts` checks the C++ header
 * `kernels.h` against the code tables below, in both directions.
 *
 * Import it alone as `@moelab/core/kernels` (no tfjs, no side effects), or from `@moelab/core`.
 *
 * A backend implements a kernel by registering a tfjs kernel under the name; core checks
 * `tf.getKernel(name, backend)` and otherwise runs its op-by-op version. Gradients of the fused
 * forward kernels are registered once, for every backend, by the backend package that brings them
 * (kernels-cpu today): the backward work is itself a kernel (`...Grad`) that each backend brings.
 * See docs/kernel-contract.md.
 */

// ---------------------------------------------------------------------------------------------
// Kernel names

/**
 * out[t] = sum over assignments n with tokenIndex[n] = t of weight[n] * act(x[t] w1[e_n]) w2[e_n].
 * Inputs {@link MoeMlpInputs}, attrs {@link MoeMlpAttrs}. Outputs [out [T,d], hidden]:
 * `hidden` is whatever the backend's backward kernel needs of each assignment's hidden layer, in
 * the backend's own order and shape (saved through the gradient's `outputsToSave`; callers dispose
 * it and read nothing from it). moelab-cpu and moelab-wasm return a handle of shape [0] whose
 * storage holds N x h values, so that the zero-filled gradient tfjs's tape allocates for an output
 * nobody differentiates is empty; moelab-cuda returns [N,h].
 */
export const MOE_MLP_KERNEL = 'MoelabMoeMLP';
/** Backward of {@link MOE_MLP_KERNEL}: inputs {@link MoeMlpGradInputs}, the forward's attrs. Outputs [dx, dw1, dw2, dweight]. */
export const MOE_MLP_GRAD_KERNEL = 'MoelabMoeMLPGrad';
/**
 * Gated (GLU) experts: out[t] = sum_n weight[n] * (act(x[t] w1[e_n]) * (x[t] w3[e_n])) w2[e_n]
 * (SwiGLU with silu, GeGLU with gelu, ReGLU with relu; arXiv:2002.05202). Inputs
 * {@link MoeGluInputs}, attrs {@link MoeGluAttrs} (the gate's activation). Outputs
 * [out [T,d], hidden]: `hidden` is the backend's own record for its backward kernel (as for
 * {@link MOE_MLP_KERNEL}: a [0]-shaped handle on moelab-cpu and moelab-wasm, [N,2h] elsewhere).
 */
export const MOE_GLU_KERNEL = 'MoelabMoeGLU';
/** Backward of {@link MOE_GLU_KERNEL}: inputs {@link MoeGluGradInputs}, the forward's attrs. Outputs [dx, dw1, dw3, dw2, dweight]. */
export const MOE_GLU_GRAD_KERNEL = 'MoelabMoeGLUGrad';
/**
 * The MLP or GLU experts of {@link MOE_MLP_KERNEL} / {@link MOE_GLU_KERNEL} with weight-only
 * quantized ("packed") expert weights, dequantized inside the expert GEMMs: gated when the w3
 * inputs are non-empty. Every weight W [E, din, dout] comes as codes int32 [E, din, words] (row
 * (e, i) a little-endian bit stream of dout unsigned `bits`-bit codes u, code j at bits
 * [j*bits, (j+1)*bits), words = ceil(dout*bits/32)), scale and zero float32 [E, G, dout]
 * (G = ceil(din / group)), and W[e,i,j] = scale[e, i/group, j] * (u - zero[e, i/group, j])
 * (docs/kernel-contract.md). Inputs {@link MoePackedInputs}, attrs {@link MoePackedAttrs}.
 * Outputs [out [T,d], hidden] as the float kernels (hidden holds N x h values, N x 2h when gated).
 */
export const MOE_PACKED_KERNEL = 'MoelabMoePacked';
/** Backward of {@link MOE_PACKED_KERNEL} w.r.t. x and the routing weights (packed weights are frozen): inputs {@link MoePackedGradInputs}, the forward's attrs. Outputs [dx, dweight]. */
export const MOE_PACKED_GRAD_KERNEL = 'MoelabMoePackedGrad';
/**
 * One expert-selected linear map: out[outRow[n]] += weight[n] * x[inRow[n]] w[e_n].
 * Inputs {@link MoeLinearInputs}, attrs {@link MoeLinearAttrs}. Output out [outRows, dout].
 */
export const MOE_LINEAR_KERNEL = 'MoelabMoeLinear';
/** Backward of {@link MOE_LINEAR_KERNEL}: inputs {@link MoeLinearGradInputs}, the forward's attrs. Outputs [dx, dw, dweight]. */
export const MOE_LINEAR_GRAD_KERNEL = 'MoelabMoeLinearGrad';
/**
 * Causal scaled dot-product attention: out_i = sum_{j<=i} softmax_j(scale q_i.k_j) v_j.
 * Inputs {@link CausalAttentionInputs}, attrs {@link CausalAttentionAttrs}. Outputs [out, lse [B,H,T]]
 * (lse = each row's log-sum-exp of the scaled scores, kept for the backward kernel).
 */
export const CAUSAL_ATTENTION_KERNEL = 'MoelabCausalAttention';
/**
 * Backward of {@link CAUSAL_ATTENTION_KERNEL}: inputs {@link CausalAttentionGradInputs}, the
 * forward's attrs. Outputs [dq, dk, dv]: with P = exp(S - lse) and D_i = sum_c dy_ic out_ic,
 * dS = P (dy v^T - D), dq = scale dS k, dk = scale dS^T q, dv = P^T dy.
 */
export const CAUSAL_ATTENTION_GRAD_KERNEL = 'MoelabCausalAttentionGrad';
/**
 * Attention of m new query rows over the first `length` positions of a KV cache (the last m of
 * them the new rows' own): out_i = sum_{j <= length - m + i} softmax_j(scale q_i.k_j) v_j. Inputs
 * {@link CachedAttentionInputs}, attrs {@link CachedAttentionAttrs}. Output [B,H,m,dv]. k and v may
 * hold more positions than `length` (a preallocated cache, see {@link CACHE_WRITE_KERNEL}); only the
 * first `length` are read. Inference only: no gradient.
 */
export const CACHED_ATTENTION_KERNEL = 'MoelabCachedAttention';
/**
 * Writes m new positions into a preallocated cache: out = cache with positions `position` ..
 * `position`+m-1 along `axis` replaced by `rows`, every other element unchanged. Inputs
 * {@link CacheWriteInputs}, attrs {@link CacheWriteAttrs}. Output shaped like cache. A backend may
 * write into the cache's storage in place when nobody else can see it (it then returns that storage
 * as its output, as {@link ADAMW_KERNEL} does), which is why callers replace their cache tensor with
 * the output and never use the input again. Inference only: no gradient.
 */
export const CACHE_WRITE_KERNEL = 'MoelabCacheWrite';
/**
 * Rotate-half RoPE of the first `dims` channels of each head (channel i pairs with i + dims/2; the
 * cos / sin tables are equal on both halves), other channels copied. Inputs {@link RopeInputs},
 * attrs {@link RopeAttrs}. Output shaped like x. `inverse` rotates by the negative angle, which is
 * the transpose, hence the gradient (no separate Grad kernel).
 */
export const ROPE_KERNEL = 'MoelabRope';
/**
 * LayerNorm over the last axis: y = (x - mean) rstd gamma + beta, rstd = 1 / sqrt(var + eps), var
 * the biased variance. Inputs {@link LayerNormInputs}, attrs {@link LayerNormAttrs}. Outputs
 * [y, mean, rstd] with mean, rstd of shape x.shape[:-1] (kept for the backward kernel).
 */
export const LAYER_NORM_KERNEL = 'MoelabLayerNorm';
/** Backward of {@link LAYER_NORM_KERNEL}: inputs {@link LayerNormGradInputs}, attrs {@link LayerNormGradAttrs}. Outputs [dx, dgamma] and dbeta when hasBeta. */
export const LAYER_NORM_GRAD_KERNEL = 'MoelabLayerNormGrad';
/**
 * One AdamW step on one tensor (no gradient): m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2,
 * p' = p - lr (m'/bc1) / (sqrt(v'/bc2) + eps) - lr wd p. Inputs {@link AdamWInputs}, attrs
 * {@link AdamWAttrs}. Outputs [p', m', v'], the same float32 operations in the same order as core's
 * op-by-op update. A backend may update in place when nobody else can see p, m, v (it then returns
 * them as its outputs), which is why callers assign all three.
 */
export const ADAMW_KERNEL = 'MoelabAdamW';
/**
 * The softmax top-k gate of a token-choice router, fused: p = softmax(scores) per row of scores
 * [T,E]; token t's experts are the k largest of scores[t] + bias (ties: the lower index first;
 * -Infinity and NaN are never chosen, so a row with fewer than k finite entries makes fewer
 * choices); weight = p[t, e] / (sum of p[t, .] over t's chosen experts) when `renormalize`, else
 * p[t, e]. Inputs {@link SoftmaxTopKInputs}, attrs {@link SoftmaxTopKAttrs}. Outputs [weight
 * float32 [k,T], expert int32 [k,T]], slot-major (slot s of token t at s*T + t, the dispatch
 * plan's order), expert -1 and weight 0 in a slot without a choice. The expert indices have no
 * gradient; the bias shifts the selection only (no gradient either).
 */
export const SOFTMAX_TOPK_KERNEL = 'MoelabSoftmaxTopK';
/**
 * Backward of {@link SOFTMAX_TOPK_KERNEL}: inputs {@link SoftmaxTopKGradInputs}, the forward's
 * attrs. Output dscores [T,E]. Renormalised, the weights are the softmax of the chosen scores, so
 * dscores[t, e_s] = w_s (dy_s - sum_r w_r dy_r) on the chosen entries and 0 elsewhere; raw,
 * dscores[t, j] = p_j (dy_j - sum_s w_s dy_s) with dy_j the slot gradient of expert j (0 if unchosen).
 */
export const SOFTMAX_TOPK_GRAD_KERNEL = 'MoelabSoftmaxTopKGrad';
/**
 * The sigmoid top-k gate of sigma-MoE / MoEUT (the `sigma-topk` router), fused: token t's experts
 * are the k largest of scores[t] [T,E] (ties: the lower index first; -Infinity and NaN are never
 * chosen), weight = sigmoid(scores[t, e]), not renormalised. Inputs {@link SigmoidTopKInputs}, attrs
 * {@link SigmoidTopKAttrs}. Outputs [weight float32 [k,T], expert int32 [k,T]], slot-major like
 * {@link SOFTMAX_TOPK_KERNEL}'s, expert -1 and weight 0 in a slot without a choice; the expert
 * indices have no gradient.
 */
export const SIGMOID_TOPK_KERNEL = 'MoelabSigmoidTopK';
/**
 * Backward of {@link SIGMOID_TOPK_KERNEL}: inputs {@link SigmoidTopKGradInputs}, the forward's attrs.
 * Output dscores [T,E]: dy_s (w_s (1 - w_s)) at each chosen (t, e_s), in float32 (the sigmoid
 * gradient of tfjs), and 0 elsewhere.
 */
export const SIGMOID_TOPK_GRAD_KERNEL = 'MoelabSigmoidTopKGrad';
/** sum(x^2) as a scalar (one term of the global gradient norm) without the x-sized temporary. Inputs {@link SumOfSquaresInputs}, no attrs. */
export const SUM_OF_SQUARES_KERNEL = 'MoelabSumOfSquares';

/** Every fused kernel name of the contract. */
export const FUSED_KERNELS = [
  MOE_MLP_KERNEL,
  MOE_MLP_GRAD_KERNEL,
  MOE_GLU_KERNEL,
  MOE_GLU_GRAD_KERNEL,
  MOE_PACKED_KERNEL,
  MOE_PACKED_GRAD_KERNEL,
  MOE_LINEAR_KERNEL,
  MOE_LINEAR_GRAD_KERNEL,
  CAUSAL_ATTENTION_KERNEL,
  CAUSAL_ATTENTION_GRAD_KERNEL,
  CACHED_ATTENTION_KERNEL,
  CACHE_WRITE_KERNEL,
  ROPE_KERNEL,
  LAYER_NORM_KERNEL,
  LAYER_NORM_GRAD_KERNEL,
  ADAMW_KERNEL,
  SUM_OF_SQUARES_KERNEL,
  SOFTMAX_TOPK_KERNEL,
  SOFTMAX_TOPK_GRAD_KERNEL,
  SIGMOID_TOPK_KERNEL,
  SIGMOID_TOPK_GRAD_KERNEL,
] as const;
export type FusedKernelName = (typeof FUSED_KERNELS)[number];

// ---------------------------------------------------------------------------------------------
// Inputs and attributes (T is the tensor type: tf.Tensor at a call site, TensorInfo in a kernel)

/** x [T,d], w1 [E,d,h], w2 [E,h,d]; tokenIndex, expertIndex int32 [N]; weight [N]. */
export interface MoeMlpInputs<T> {
  x: T;
  w1: T;
  w2: T;
  tokenIndex: T;
  expertIndex: T;
  weight: T;
}
/** The forward's inputs plus dy [T,d] and the forward's second output `hidden` (N x h values). */
export interface MoeMlpGradInputs<T> extends MoeMlpInputs<T> {
  dy: T;
  hidden: T;
}
export interface MoeMlpAttrs {
  /** The expert activation (gelu = the exact erf form). */
  activation: MoeActivation;
}

/** x [T,d], w1 and w3 [E,d,h], w2 [E,h,d]; tokenIndex, expertIndex int32 [N]; weight [N]. */
export interface MoeGluInputs<T> extends MoeMlpInputs<T> {
  w3: T;
}
/** The forward's inputs plus dy [T,d] and the forward's second output `hidden` (N x 2h values). */
export interface MoeGluGradInputs<T> extends MoeGluInputs<T> {
  dy: T;
  hidden: T;
}
export interface MoeGluAttrs {
  /** The gate's activation (gelu = the exact erf form). */
  activation: MoeActivation;
}

/**
 * x [T,d]; w1 (and w3) [E,d,h] and w2 [E,h,d] as codes int32 [E,din,ceil(dout*bits/32)] + scale
 * and zero float32 [E,G,dout]; tokenIndex, expertIndex int32 [N]; weight [N]. Ungated experts
 * pass empty w3 tensors (shape [0]: tfjs saves gradient inputs by name, so all are always there).
 */
export interface MoePackedInputs<T> {
  x: T;
  w1Codes: T;
  w1Scale: T;
  w1Zero: T;
  w3Codes: T;
  w3Scale: T;
  w3Zero: T;
  w2Codes: T;
  w2Scale: T;
  w2Zero: T;
  tokenIndex: T;
  expertIndex: T;
  weight: T;
}
/** The forward's inputs plus dy [T,d] and the forward's second output `hidden`. */
export interface MoePackedGradInputs<T> extends MoePackedInputs<T> {
  dy: T;
  hidden: T;
}
export interface MoePackedAttrs {
  /** The activation (of the gate, when gated). */
  activation: MoeActivation;
  /** Code width: one of {@link PACKED_BITS}. */
  bits: PackedBits;
  /** Input rows per scale group; 0 (or >= the input width) = one group per output channel. */
  group: number;
}

/** The code widths of packed expert weights. */
export const PACKED_BITS = [2, 3, 4, 8] as const;
export type PackedBits = (typeof PACKED_BITS)[number];

/** Scale groups of a packed weight with `din` input rows: ceil(din / group), 1 for group 0 or >= din. */
export function packedGroups(din: number, group: number): number {
  return group <= 0 || group >= din ? 1 : Math.ceil(din / group);
}

/** int32 words of one packed row of `dout` codes of `bits` bits. */
export function packedRowWords(dout: number, bits: number): number {
  return Math.ceil((dout * bits) / 32);
}

/** x [R,din], w [E,din,dout]; inRow, outRow, expertIndex int32 [N]; weight [N]. */
export interface MoeLinearInputs<T> {
  x: T;
  w: T;
  inRow: T;
  outRow: T;
  expertIndex: T;
  weight: T;
}
/** The forward's inputs plus dy [outRows,dout]. */
export interface MoeLinearGradInputs<T> extends MoeLinearInputs<T> {
  dy: T;
}
export interface MoeLinearAttrs {
  /** Rows of the output (a non-negative integer). */
  outRows: number;
}

/** q, k [B,H,T,dk] and v [B,H,T,dv] (layout 'bthd': [B,T,H,d]). */
export interface CausalAttentionInputs<T> {
  q: T;
  k: T;
  v: T;
}
/** The forward's inputs plus dy and out (the layout of out) and lse [B,H,T]. */
export interface CausalAttentionGradInputs<T> extends CausalAttentionInputs<T> {
  dy: T;
  out: T;
  lse: T;
}
export interface CausalAttentionAttrs {
  /** Multiplies q.k before the softmax (usually 1/sqrt(dk)); finite. */
  scale: number;
  /** Default 'bhtd'. */
  layout?: AttentionLayout;
}

/**
 * q [B,H,m,dk]; k [B,Hkv,Tk,dk] and v [B,Hkv,Tk,dv] with Tk >= length and Hkv dividing H
 * (grouped-query attention: query head h reads key / value head floor(h·Hkv/H)).
 */
export interface CachedAttentionInputs<T> {
  q: T;
  k: T;
  v: T;
}
export interface CachedAttentionAttrs {
  /** Multiplies q.k before the softmax (usually 1/sqrt(dk)); finite. */
  scale: number;
  /** Cached positions to attend over, the new rows included: an integer, m <= length <= Tk. */
  length: number;
}

/** cache [..., C, ...] and rows [..., m, ...]: the same shape except along the attrs' axis. */
export interface CacheWriteInputs<T> {
  cache: T;
  rows: T;
}
export interface CacheWriteAttrs {
  /** The time axis of cache and rows. */
  axis: number;
  /** Where the first new row goes along `axis`: an integer, position + m <= C. */
  position: number;
}

/** x [B,H,T,dh] (layout 'bthd': [B,T,H,dh]); cos, sin [T,dims], dims even and <= dh. */
export interface RopeInputs<T> {
  x: T;
  cos: T;
  sin: T;
}
export interface RopeAttrs {
  /** Rotate by the negative angle (the transpose: the gradient). */
  inverse: boolean;
  /** Default 'bhtd'. */
  layout?: AttentionLayout;
}

/** x [..., D], gamma [D], beta [D] (absent without bias). */
export interface LayerNormInputs<T> {
  x: T;
  gamma: T;
  beta?: T;
}
export interface LayerNormAttrs {
  /** Added to the variance; non-negative. */
  eps: number;
  /** Whether beta is an input (the gradient reads it back from these attrs). */
  hasBeta: boolean;
}
/** dy, x [..., D], gamma [D], and the forward's mean, rstd [...]. */
export interface LayerNormGradInputs<T> {
  dy: T;
  x: T;
  gamma: T;
  mean: T;
  rstd: T;
}
export interface LayerNormGradAttrs {
  /** Whether to return dbeta as a third output. */
  hasBeta: boolean;
}

/** p, g, m, v: float32, one shape. */
export interface AdamWInputs<T> {
  p: T;
  g: T;
  m: T;
  v: T;
}
export interface AdamWAttrs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay (0 = none). */
  weightDecay: number;
  /** Bias corrections 1 - beta1^t and 1 - beta2^t. */
  bc1: number;
  bc2: number;
}

/** scores [T,E] float32; bias [E] float32 added for the selection only, or shape [0] for none. */
export interface SoftmaxTopKInputs<T> {
  scores: T;
  bias: T;
}
/** dy [k,T] (the gradient of the weight output), the forward's scores and its two outputs. */
export interface SoftmaxTopKGradInputs<T> {
  dy: T;
  scores: T;
  weight: T;
  expert: T;
}
export interface SoftmaxTopKAttrs {
  /** Experts per token, 1 <= k <= E. */
  k: number;
  /** Divide each token's weights by their sum. */
  renormalize: boolean;
}

/** scores [T,E] float32. */
export interface SigmoidTopKInputs<T> {
  scores: T;
}
/** dy [k,T] (the gradient of the weight output), the forward's scores (their shape) and its two outputs. */
export interface SigmoidTopKGradInputs<T> {
  dy: T;
  scores: T;
  weight: T;
  expert: T;
}
export interface SigmoidTopKAttrs {
  /** Experts per token, 1 <= k <= E. */
  k: number;
}

export interface SumOfSquaresInputs<T> {
  x: T;
}

// ---------------------------------------------------------------------------------------------
// Enumerated attribute values and the native codes (kernels-cpu's src/native/kernels.h)

/** Tensor layouts of the attention and RoPE kernels: [B, H, T, d] or [B, T, H, d] (the projections' own layout). */
export const ATTENTION_LAYOUTS = ['bhtd', 'bthd'] as const;
export type AttentionLayout = (typeof ATTENTION_LAYOUTS)[number];

/** Activations of the fused MoE kernels and their native codes (kernels.h `MoeActivation`, `kMoe...`). */
export const MOE_ACTIVATION_CODE = { identity: 0, relu: 1, gelu: 2, silu: 3, relu2: 4 } as const;
export type MoeActivation = keyof typeof MOE_ACTIVATION_CODE;

/** Whether `name` is an activation the fused MoE kernels take. */
export function isMoeActivation(name: string): name is MoeActivation {
  return Object.hasOwn(MOE_ACTIVATION_CODE, name);
}

/**
 * The native bias + activation pass (kernels.h `BiasActivation`, `kAct...`), part 1: the
 * activations of tfjs's `_FusedMatMul`, keyed by tfjs's attr value.
 */
export const FUSED_MATMUL_ACTIVATION_CODE = { linear: 0, relu: 1, relu6: 2, sigmoid: 3, elu: 4, leakyrelu: 5 } as const;
/**
 * Part 2: elementwise unary kernels run through the same threaded pass, with tfjs-cpu's semantics
 * (reluNan: NaN stays NaN; step: alpha for x <= 0; exp and sigmoid computed in double).
 */
export const UNARY_ACTIVATION_CODE = { reluNan: 6, step: 7, expDouble: 8, sigmoidDouble: 9 } as const;

/** Elementwise binaries with broadcasting (kernels.h `BinaryOp`, `kBin...`); 5 and up write a 0/1 byte (bool). */
export const BINARY_OP_CODE = {
  mul: 0,
  add: 1,
  sub: 2,
  div: 3,
  squaredDifference: 4,
  equal: 5,
  notEqual: 6,
  greater: 7,
  greaterEqual: 8,
  less: 9,
  lessEqual: 10,
} as const;

/** Reductions over the middle axis of [outer, R, inner] (kernels.h `ReduceKind`, `kReduce...`). */
export const REDUCE_CODE = { sum: 0, mean: 1, max: 2, sumOfSquares: 3 } as const;
