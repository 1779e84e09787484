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
 */
import { Config, defineEntry, MoelabError, MultiHeadAttention, Type } from '@moelab/core';

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
    return new MultiHeadAttention(d, { ...c, kvHeads }, ctx.rng);
  },
});
