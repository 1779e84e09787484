/**
 * The foundation's presets: a dense baseline and a softmax top-k MoE with exactly the same active
 * parameters per token. MoE FFN per token: router 8x128 + 2 experts x (128x256 + 256x128) = 132,096;
 * dense FFN: 128x516 + 516x128 = 132,096.
 */
import { definePlugin, definePreset } from '@moelab/core';

const base = { type: 'transformer-lm', vocabSize: 256, dModel: 128, contextLength: 128, stack: { groupSize: 2, repeats: 1 } };
const attention = { type: 'mha', heads: 4 };
const train = { batchSize: 16, seqLen: 128, lr: 3e-3, warmup: 30, steps: 400, evalEvery: 100, evalBatches: 8 };

export const denseTiny = definePreset(
  'dense-tiny',
  'Dense baseline: d 128, 2 layers, 4 heads, FFN 516 (same active params per token as moe-tiny).',
  { ...base, block: { type: 'transformer', norm: 'pre', attention, ffn: { type: 'dense', hidden: 516, activation: 'gelu' } } },
  train,
);

export const moeTiny = definePreset(
  'moe-tiny',
  'Softmax top-2 MoE: d 128, 2 layers, 8 GELU experts of 256, Switch balance loss (same active params as dense-tiny).',
  {
    ...base,
    block: {
      type: 'transformer',
      norm: 'pre',
      attention,
      ffn: { type: 'moe', experts: 8, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 256, activation: 'gelu' } },
    },
  },
  train,
);

export const foundationPresets = definePlugin({ name: '@moelab/node/presets', presets: [denseTiny, moeTiny] });
