/**
 * Presets for the attention mixtures, at the foundation presets' scale (bytes, d 128, 2 layers,
 * context 128) so they train on the Brown Corpus in a few CPU minutes:
 *
 * - `bam-attn-tiny`: BAM's architecture (arXiv 2408.08274 §3.1): parallel blocks with one RMSNorm,
 *   a soft mixture of 4 attention experts (4 heads of 32 each, own K/V, RoPE), dense GELU FFN 512.
 * - `moa-tiny`: MoA (arXiv 2210.05144): sequential pre-norm blocks, learned absolute positions (the
 *   official layer has no RoPE), top-2 of 8 head experts of width 32 sharing one K/V head, switch 0.01
 *   and z 0.001 auxiliary losses as in the official WMT14 script; dense GELU FFN 512.
 */
import { definePlugin, definePreset, type NodeSpec } from '@moelab/core';

const base = { type: 'transformer-lm', vocabSize: 256, dModel: 128, contextLength: 128, stack: { groupSize: 2, repeats: 1 } };
const ffn = { type: 'dense', hidden: 512, activation: 'gelu' };
const train = { batchSize: 16, seqLen: 128, lr: 3e-3, warmup: 30, steps: 400, evalEvery: 100, evalBatches: 8 };

export const bamAttnTinySpec: NodeSpec = {
  ...base,
  outNorm: 'rmsnorm',
  block: {
    type: 'transformer',
    layout: 'parallel',
    normType: 'rmsnorm',
    attention: { type: 'bam-soft-moa', experts: 4, heads: 4, kv: 'experts' },
    ffn,
  },
};

export const moaTinySpec: NodeSpec = {
  ...base,
  positionEmbedding: 'learned',
  block: { type: 'transformer', norm: 'pre', attention: { type: 'moa', experts: 8, k: 2, headDim: 32 }, ffn },
};

export const bamAttnTiny = definePreset(
  'bam-attn-tiny',
  'BAM soft Mixture-of-Attention: d 128, 2 parallel blocks, 4 attention experts (4x32 heads, own K/V, RoPE), dense FFN 512.',
  bamAttnTinySpec,
  train,
);

export const moaTiny = definePreset(
  'moa-tiny',
  'MoA (Mixture of Attention heads): d 128, 2 layers, learned positions, top-2 of 8 head experts (32 wide, one shared K/V), dense FFN 512.',
  moaTinySpec,
  train,
);

export const attentionMoePresets = definePlugin({ name: '@moelab/attention/attention-moe-presets', presets: [bamAttnTiny, moaTiny] });
