/**
 * Standard causal multi-head attention with rotary position embedding.
 *
 *   Attn(x) = concat_h softmax(q_h k_h^T / sqrt(dh) + causal) v_h  W_o,   q_h, k_h rotated by RoPE
 */
import { Config, defineEntry, MoelabError, MultiHeadAttention, Type } from '@moelab/core';

export const mha = defineEntry({
  kind: 'attention',
  name: 'mha',
  description: 'Causal multi-head attention with RoPE (dense).',
  schema: Config({
    heads: Type.Integer({ minimum: 1, default: 4 }),
    headDim: Type.Optional(Type.Integer({ minimum: 1, description: 'default dModel / heads' })),
    ropeDims: Type.Optional(Type.Integer({ minimum: 0, description: 'channels per head rotated by RoPE (default: all; 0 = none)' })),
    ropeBase: Type.Number({ exclusiveMinimum: 0, default: 10000 }),
    bias: Type.Boolean({ default: false }),
  }),
  create: (c, ctx) => {
    const d = ctx.need('dModel');
    if (c.headDim === undefined && d % c.heads !== 0)
      throw new MoelabError(`dModel ${d} is not divisible by heads ${c.heads}; set headDim`, `${ctx.path}.heads`);
    return new MultiHeadAttention(d, c, ctx.rng);
  },
});
