// The `moelab bench` rows that the WebAssembly scripts of this folder time (profile-wasm.mjs,
// wasm-ab.mjs): the layer rows' feed-forward specs with their useful forward FLOPs (the bench's
// convention: a forward + backward step is 3x), at the bench's shapes (T = 16 x 256 tokens, d = 256).
export const T = 4096;
export const d = 256;

/** A top-k MoE row: router scores (2 T d E) plus each token's k experts (two GEMMs, three for GLU). */
const moeRow = (name, E, k, type, hidden, activation) => ({
  name,
  ffn: { type: 'moe', experts: E, router: { type: 'softmax-topk', k, balanceCoef: 0, zLossCoef: 0 }, expert: { type, hidden, activation } },
  flops: 2 * T * d * E + (type === 'glu' ? 6 : 4) * T * k * d * hidden,
});

export const FFN_ROWS = {
  dense: { name: 'a dense FFN relu', ffn: { type: 'dense', hidden: 1024, activation: 'relu' }, flops: 4 * T * d * 1024 },
  e8: moeRow('b softmax-topk loop E8x1024 k2', 8, 2, 'mlp', 1024, 'relu'),
  e64: moeRow('b softmax-topk loop E64x128 k4', 64, 4, 'mlp', 128, 'relu'),
  glu8: moeRow('f SwiGLU MoE topk E8x1024 k2', 8, 2, 'glu', 1024, 'silu'),
  glu64: moeRow('f SwiGLU MoE topk E64x128 k4', 64, 4, 'glu', 128, 'silu'),
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
