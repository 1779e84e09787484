/**
 * Presets for the expert catalogue, scaled to train in a few CPU minutes on bytes (vocab 256, context
 * 128, d 128, 2 layers, LLaMA-style pre-RMSNorm blocks with RoPE attention, untied head):
 *
 * - `monet-tiny`: MONET-VD (docs/monet.md#preset) with E = 32 shards per group, so
 *   N = 1,024 composed experts per layer, expert width m = 8, H = 4 routing heads, k = 4 (k/E = 1/8),
 *   a router in every layer (G = 1), squared ReLU, λ = 1e-3 for both aux losses, HF init (std 0.02).
 *   Its dense compute is that of an FFN of width E·m = 256 = 2d.
 * - `peer-tiny`: PEER (docs/peer-fff.md#peer) with N = 64² = 4,096 single-neuron experts per layer,
 *   h = 4 heads retrieving k = 8 each (32 active neurons per token), dk = 32, query BatchNorm, GELU.
 *   (The paper replaces the middle block's FFN only; with one shared block spec every layer gets PEER.)
 */
import { definePlugin, definePreset, type NodeSpec } from '@moelab/core';

const D = 128;
const base = { type: 'transformer-lm', vocabSize: 256, dModel: D, contextLength: 128, stack: { groupSize: 2, repeats: 1 } };
const attention = { type: 'mha', heads: 4 };
export const expertPresetTrain = { batchSize: 16, seqLen: 128, lr: 3e-3, warmup: 30, steps: 400, evalEvery: 100, evalBatches: 8 };

export const monetTinySpec: NodeSpec = {
  ...base,
  block: {
    type: 'transformer',
    norm: 'pre',
    normType: 'rmsnorm',
    attention,
    ffn: { type: 'monet-vd', experts: 32, expertDim: 8, heads: 4, k: 4, routerGroup: 1, activation: 'relu2' },
  },
};

export const peerTinySpec: NodeSpec = {
  ...base,
  block: {
    type: 'transformer',
    norm: 'pre',
    normType: 'rmsnorm',
    attention,
    ffn: { type: 'peer', experts: 4096, heads: 4, k: 8, keyDim: 32, activation: 'gelu', queryBatchNorm: true },
  },
};

export const monetTiny = definePreset(
  'monet-tiny',
  'MONET-VD: d 128, 2 layers, 1,024 composed experts per layer (32 x 32 shards of width 8), 4 routing heads, k 4.',
  monetTinySpec,
  expertPresetTrain,
);

export const peerTiny = definePreset(
  'peer-tiny',
  'PEER: d 128, 2 layers, 4,096 single-neuron experts per layer, 4 heads x top-8 product-key retrieval, query BN.',
  peerTinySpec,
  expertPresetTrain,
);

export const expertPresets = definePlugin({ name: '@moelab/experts/presets', presets: [monetTiny, peerTiny] });
