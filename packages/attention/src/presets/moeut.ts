/**
 * MoEUT presets, scaled down from the paper's recipe (docs/moeut.md#presets, arXiv 2405.16039) to train in a few CPU
 * minutes on bytes (vocab 256, context 128, d 128):
 *
 * - `moeut-tiny`: G = 2 distinct peri-LN layers repeated R = 2 times (L = 4, abab), SwitchHead with H = 2
 *   heads of dh = 32 (H·dh = d/2 and K = 2 of E = 4 experts per head, as the 126M-1B profiles have
 *   H·dh ≤ d/2 and K = 2), sigma-MoE with E = 16 experts of es = 64, K = 4 (active width K·es = 2d, as in
 *   every profile but 44M), γ = 0.01, δ = 0.001, MoEUT init (√(2/L)), embedding std 1/√d, untied head
 *   with bias, dropout 0.
 * - `moeut-tiny-dense-params`: the paper's dense baseline shape (pre-LN, RoPE, ReLU FFN, L = 4 unshared
 *   layers, 4 heads of 32) with the FFN width chosen so that the total parameter count equals moeut-tiny's.
 * - `moeut-tiny-dense-compute`: the same dense shape with the FFN width chosen so that the MACs per token
 *   (`model.macsPerToken(128)`) equal moeut-tiny's.
 * Tests check both matches to within 0.5%.
 */
import { definePlugin, definePreset, type NodeSpec } from '@moelab/core';

const D = 128;
const base = { type: 'transformer-lm', vocabSize: 256, dModel: D, contextLength: 128 };
/** AdamW with the paper's weight decay, cosine to 10%, clipping 0.25; a larger lr than the paper's 2.5e-4 suits this scale. */
export const moeutTinyTrain = {
  batchSize: 16,
  seqLen: 128,
  lr: 3e-3,
  warmup: 30,
  steps: 400,
  weightDecay: 0.01,
  minLrRatio: 0.1,
  clip: 0.25,
  evalEvery: 100,
  evalBatches: 8,
};

export const moeutTinySpec: NodeSpec = {
  ...base,
  stack: { groupSize: 2, repeats: 2, order: 'abab' },
  headBias: true,
  embeddingStd: 1 / Math.sqrt(D),
  block: {
    type: 'transformer',
    norm: 'peri',
    attention: { type: 'switchhead', heads: 2, headDim: 32, experts: 4, k: 2, balanceCoef: 0.001 },
    ffn: { type: 'sigma-moe', experts: 16, k: 4, expertSize: 64, balanceCoef: 0.01 },
  },
};

function denseSpec(hidden: number): NodeSpec {
  return {
    ...base,
    stack: { groupSize: 4, repeats: 1 },
    headBias: true,
    embeddingStd: 1 / Math.sqrt(D),
    block: { type: 'transformer', norm: 'pre', attention: { type: 'mha', heads: 4 }, ffn: { type: 'dense', hidden, activation: 'relu' } },
  };
}

/** FFN width of the parameter-matched dense baseline (total parameters = moeut-tiny's 763,392). */
export const DENSE_PARAMS_HIDDEN = 423;
/** FFN width of the compute-matched dense baseline (MACs per token at T = 128 = moeut-tiny's). */
export const DENSE_COMPUTE_HIDDEN = 176;

export const moeutTinyDenseParamsSpec = denseSpec(DENSE_PARAMS_HIDDEN);
export const moeutTinyDenseComputeSpec = denseSpec(DENSE_COMPUTE_HIDDEN);

export const moeutTiny = definePreset(
  'moeut-tiny',
  'MoEUT: d 128, 2 shared peri-LN layers x 2 repeats, SwitchHead 2x32 (4 experts, k 2), sigma-MoE 16x64 (k 4).',
  moeutTinySpec,
  moeutTinyTrain,
);
export const moeutTinyDenseParams = definePreset(
  'moeut-tiny-dense-params',
  'Dense pre-LN baseline with the same total parameters as moeut-tiny (4 layers, FFN 423).',
  moeutTinyDenseParamsSpec,
  moeutTinyTrain,
);
export const moeutTinyDenseCompute = definePreset(
  'moeut-tiny-dense-compute',
  'Dense pre-LN baseline with the same MACs per token as moeut-tiny (4 layers, FFN 176).',
  moeutTinyDenseComputeSpec,
  moeutTinyTrain,
);

export const moeutPresets = definePlugin({ name: '@moelab/attention/presets', presets: [moeutTiny, moeutTinyDenseParams, moeutTinyDenseCompute] });
