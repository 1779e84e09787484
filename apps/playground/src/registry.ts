/**
 * The playground's registry: every browser-safe plugin (core, routers, experts, attention, upcycle, finetune) and their
 * presets, plus the CLI's foundation presets (dense-tiny, moe-tiny; copied from packages/node
 * presets.ts because @moelab/node is Node-only) and two micro presets small enough to train in a
 * few seconds in any browser.
 */
import { attention, attentionMoePresets, moeutPresets } from '@moelab/attention';
import { corePlugin, createRegistry, definePlugin, definePreset, type Plugin, type Registry } from '@moelab/core';
import { expertPresets, experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { finetune } from '@moelab/finetune';
import { upcyclePlugin } from '@moelab/upcycle';

const base = { type: 'transformer-lm', vocabSize: 256, dModel: 128, contextLength: 128, stack: { groupSize: 2, repeats: 1 } };
const mha = { type: 'mha', heads: 4 };
const train = { batchSize: 16, seqLen: 128, lr: 3e-3, warmup: 30, steps: 400, evalEvery: 100, evalBatches: 8 };

/** The CLI's `dense-tiny` / `moe-tiny` (same specs as packages/node/src/presets.ts). */
export const foundationPresets = definePlugin({
  name: '@moelab/node/presets',
  presets: [
    definePreset(
      'dense-tiny',
      'Dense baseline: d 128, 2 layers, 4 heads, FFN 516 (same active params per token as moe-tiny).',
      { ...base, block: { type: 'transformer', norm: 'pre', attention: mha, ffn: { type: 'dense', hidden: 516, activation: 'gelu' } } },
      train,
    ),
    definePreset(
      'moe-tiny',
      'Softmax top-2 MoE: d 128, 2 layers, 8 GELU experts of 256, Switch balance loss (same active params as dense-tiny).',
      {
        ...base,
        block: {
          type: 'transformer',
          norm: 'pre',
          attention: mha,
          ffn: { type: 'moe', experts: 8, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 256, activation: 'gelu' } },
        },
      },
      train,
    ),
  ],
});

const micro = { type: 'transformer-lm', vocabSize: 256, dModel: 32, contextLength: 32, stack: { groupSize: 2, repeats: 1 } };
const microTrain = { batchSize: 8, seqLen: 32, lr: 1e-2, warmup: 5, steps: 200, evalEvery: 10, evalBatches: 2 };

/** Playground-only presets: tiny enough for a few seconds of training on the plain JS backend. */
export const playgroundPresets = definePlugin({
  name: 'playground/presets',
  presets: [
    definePreset(
      'moe-micro',
      'Softmax top-2 MoE: d 32, 2 layers, 2 heads, 4 GELU experts of 32. Trains in seconds (for trying things out).',
      {
        ...micro,
        block: {
          type: 'transformer',
          norm: 'pre',
          attention: { type: 'mha', heads: 2 },
          ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 32, activation: 'gelu' } },
        },
      },
      microTrain,
    ),
    definePreset(
      'dense-micro',
      'Dense baseline for moe-micro: d 32, 2 layers, FFN 64 (same active FFN params per token, plus the router).',
      { ...micro, block: { type: 'transformer', norm: 'pre', attention: { type: 'mha', heads: 2 }, ffn: { type: 'dense', hidden: 64, activation: 'gelu' } } },
      microTrain,
    ),
  ],
});

export const playgroundPlugins: Plugin[] = [
  corePlugin,
  routers,
  experts,
  attention,
  foundationPresets,
  moeutPresets,
  attentionMoePresets,
  expertPresets,
  upcyclePlugin,
  finetune,
  playgroundPresets,
];

export function createPlaygroundRegistry(): Registry {
  return createRegistry(...playgroundPlugins);
}
