/**
 * Standard causal multi-head attention with rotary position embedding, optionally grouped-query.
 *
 *   Attn(x) = concat_h softmax(q_h k_g(h)^T / sqrt(dh) + causal) v_g(h)  W_o,   q_h, k_g rotated by RoPE
 *
 * with g(h) = floor(h / (heads / kvHeads)): kvHeads key/value heads, each shared by a group of query
 * heads (GQA, arXiv 2305.13245; kvHeads = heads is plain MHA, kvHeads = 1 multi-query attention).
 * Options for the Hugging Face layouts (docs/interop.md): q/k/v biases without an o bias (Qwen2),
 * RMSNorm of q and k per head (Qwen3) or over the whole projection (OLMoE), and the RoPE channel pairing
 * (rotate-half, as transformers does, or interleaved, as GPT-J and Meta's LLaMA code do).
 *
 * RoPE context extension (`ropeScaling`, HF `rope_scaling`) rescales the inverse frequencies
 * ω_i = base^(−2i/d) of the rotation angles p·ω_i (core's rope.ts has each transform in full):
 *
 *   linear:  ω'_i = ω_i / s                                     (position interpolation, arXiv 2306.15595)
 *   llama3:  ω'_i = ω_i if λ_i < L/h;  ω_i / s if λ_i > L/l;  (1 − γ) ω_i / s + γ ω_i between,
 *            λ_i = 2π / ω_i,  γ = (L/λ_i − l) / (h − l)       (Llama 3.1)
 *   yarn:    ω'_i = ω_i / s · r_i + ω_i (1 − r_i),  r_i a linear ramp over the dimensions that turn
 *            between β_fast and β_slow times over L; cos and sin × m = 0.1 ln s + 1   (arXiv 2309.00071)
 *
 * with s = factor, L = originalContext (the pretraining context), l / h = lowFreqFactor / highFreqFactor.
 * `slidingWindow` w masks keys older than the window (Mistral 7B, arXiv 2310.06825):
 *
 *   Attn_i = softmax_j(q_i · k_j / √dh, over i − w < j <= i) v
 *
 * The fused attention kernels take the scaled RoPE tables as they are; they have no window, so a window
 * shorter than the sequence runs the generic masked attention.
 */
import { checkRopeScaling, Config, defineEntry, MoelabError, MultiHeadAttention, Type } from '@moelab/core';

export const mha = defineEntry({
  kind: 'attention',
  name: 'mha',
  description: 'Causal multi-head attention with RoPE (dense), grouped-query with kvHeads < heads.',
  reference: 'docs/interop.md#attention-options',
  schema: Config({
    heads: Type.Integer({ minimum: 1, default: 4 }),
    kvHeads: Type.Optional(
      Type.Integer({ minimum: 1, description: 'key/value heads (grouped-query attention, HF num_key_value_heads); must divide heads; default heads' }),
    ),
    headDim: Type.Optional(Type.Integer({ minimum: 1, description: 'default dModel / heads' })),
    ropeDims: Type.Optional(Type.Integer({ minimum: 0, description: 'channels per head rotated by RoPE (default: all; 0 = none)' })),
    ropeBase: Type.Number({ exclusiveMinimum: 0, default: 10000 }),
    ropeLayout: Type.Union([Type.Literal('half'), Type.Literal('interleaved')], {
      default: 'half',
      description: 'RoPE channel pairs: half = (i, i + dims/2), HF rotate_half; interleaved = (2i, 2i+1), GPT-J / Meta LLaMA',
    }),
    bias: Type.Boolean({ default: false, description: 'biases on all four projections' }),
    qkvBias: Type.Optional(Type.Boolean({ description: 'biases on q, k, v only (Qwen2: true with bias false); default: bias' })),
    qkNorm: Type.Union([Type.Literal('none'), Type.Literal('head'), Type.Literal('projection')], {
      default: 'none',
      description: 'RMSNorm of q and k before RoPE: head = per head over headDim (Qwen3), projection = over the whole q / k projection (OLMoE)',
    }),
    qkNormEps: Type.Number({ exclusiveMinimum: 0, default: 1e-6, description: 'epsilon of the q / k RMSNorms (HF rms_norm_eps)' }),
    ropeScaling: Type.Optional(
      Config(
        {
          type: Type.Union([Type.Literal('linear'), Type.Literal('llama3'), Type.Literal('yarn')], {
            description: 'how the RoPE frequencies are rescaled for a longer context (HF rope_scaling.rope_type)',
          }),
          factor: Type.Number({ exclusiveMinimum: 0, description: 's: extended context / pretraining context' }),
          originalContext: Type.Optional(
            Type.Integer({ minimum: 1, description: 'L: the pretraining context (llama3, yarn; HF original_max_position_embeddings)' }),
          ),
          lowFreqFactor: Type.Optional(
            Type.Number({ exclusiveMinimum: 0, description: 'llama3: wavelengths above L / lowFreqFactor are fully interpolated; default 1' }),
          ),
          highFreqFactor: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'llama3: wavelengths below L / highFreqFactor are kept; default 4' })),
          betaFast: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'yarn: β_fast; default 32' })),
          betaSlow: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'yarn: β_slow; default 1' })),
          attentionFactor: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'yarn: m, the factor on cos and sin; default 0.1 ln(factor) + 1' })),
          truncate: Type.Optional(Type.Boolean({ description: "yarn: round the ramp's ends to whole dimensions; default true" })),
        },
        { description: 'RoPE context extension (HF rope_scaling); default none' },
      ),
    ),
    slidingWindow: Type.Optional(
      Type.Integer({ minimum: 1, description: 'each query attends to itself and the slidingWindow - 1 keys before it (HF sliding_window); default: all' }),
    ),
  }),
  create: (c, ctx) => {
    const d = ctx.need('dModel');
    if (c.headDim === undefined && d % c.heads !== 0)
      throw new MoelabError(`dModel ${d} is not divisible by heads ${c.heads}; set headDim`, `${ctx.path}.heads`);
    const kvHeads = c.kvHeads ?? c.heads;
    if (c.heads % kvHeads !== 0)
      throw new MoelabError(
        `kvHeads ${kvHeads} does not divide heads ${c.heads} (each key/value head serves heads / kvHeads query heads)`,
        `${ctx.path}.kvHeads`,
      );
    if (c.ropeScaling) checkRopeScaling(c.ropeScaling, `${ctx.path}.ropeScaling`);
    return new MultiHeadAttention(d, { ...c, kvHeads }, ctx.rng);
  },
});
