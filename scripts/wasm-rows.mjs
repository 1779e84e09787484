// The `moelab bench` rows that the WebAssembly scripts of this folder time (profile-wasm.mjs,
// wasm-ab.mjs): the layer rows' feed-forward specs with their useful forward FLOPs (the bench's
// convention: a forward + backward step is 3x), at the bench's shapes (T = 16 x 256 tokens, d = 256).
export const T = 4096;
export const d = 256;

const moe = (E, k, expert) => ({ type: 'moe', experts: E, router: { type: 'softmax-topk', k, balanceCoef: 0, zLossCoef: 0 }, expert });

export const FFN_ROWS = {
  dense: { name: 'a dense FFN relu', ffn: { type: 'dense', hidden: 1024, activation: 'relu' }, flops: 4 * T * d * 1024 },
  e8: {
    name: 'b softmax-topk loop E8x1024 k2',
    ffn: moe(8, 2, { type: 'mlp', hidden: 1024, activation: 'relu' }),
    flops: 2 * T * d * 8 + 4 * T * 2 * d * 1024,
  },
  e64: {
    name: 'b softmax-topk loop E64x128 k4',
    ffn: moe(64, 4, { type: 'mlp', hidden: 128, activation: 'relu' }),
    flops: 2 * T * d * 64 + 4 * T * 4 * d * 128,
  },
  glu8: {
    name: 'f SwiGLU MoE topk E8x1024 k2',
    ffn: moe(8, 2, { type: 'glu', hidden: 1024, activation: 'silu' }),
    flops: 2 * T * d * 8 + 6 * T * 2 * d * 1024,
  },
  glu64: {
    name: 'f SwiGLU MoE topk E64x128 k4',
    ffn: moe(64, 4, { type: 'glu', hidden: 128, activation: 'silu' }),
    flops: 2 * T * d * 64 + 6 * T * 4 * d * 128,
  },
};

/** The feed-forward module `ffn` as the bench builds it: layer 0 of a one-layer LM. */
export const benchFFN = (buildModel, registry, ffn) =>
  buildModel(
    {
      type: 'transformer-lm',
      vocabSize: 256,
      dModel: d,
      contextLength: 256,
      stack: { groupSize: 1, repeats: 1 },
      block: { type: 'transformer', attention: { type: 'mha', heads: 4 }, ffn },
    },
    registry,
    0,
  ).layers[0].ffn;
