/** Shared setup of the finetune tests: a tiny MoE language model, a token source, and a comparison of weights. */
import { attention } from '@moelab/attention';
import { buildModel, corePlugin, createRegistry, forwardContext, type NodeSpec, Rng, type TokenSource, tf } from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { type AdaptedModel, finetune, type Model } from '../src/index.js';

export const registry = () => createRegistry(corePlugin, routers, experts, attention, finetune);

/** d = 16, 2 layers, E = 4 top-2 MLP experts (renormalised softmax top-k), byte-free vocabulary of 16. */
export function tinySpec(overrides: { ffn?: NodeSpec; dModel?: number } = {}): NodeSpec {
  return {
    type: 'transformer-lm',
    vocabSize: 16,
    dModel: overrides.dModel ?? 16,
    contextLength: 12,
    stack: { groupSize: 2 },
    block: {
      type: 'transformer',
      attention: { type: 'mha', heads: 2 },
      ffn: overrides.ffn ?? { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 16 } },
    },
  };
}

export function tinyModel(seed = 1, overrides: Parameters<typeof tinySpec>[0] = {}): Model {
  return buildModel<Model>(tinySpec(overrides), registry(), seed);
}

/** Windows of a repeating pattern shifted by a random offset (learnable in a few steps). */
export function patternSource(vocab = 16, period = 5): TokenSource {
  return {
    batch(rng, batchSize, seqLen) {
      const out = new Int32Array(batchSize * (seqLen + 1));
      for (let b = 0; b < batchSize; b++) {
        const o = rng.int(vocab);
        for (let t = 0; t <= seqLen; t++) out[b * (seqLen + 1) + t] = (o + ((t * 3) % period)) % vocab;
      }
      return out;
    },
  };
}

/** Logits of a fixed batch (inference). */
export function logitsOf(model: Model, seed = 0): Float32Array {
  return tf.tidy(() => {
    const rng = new Rng(seed);
    const ids = Int32Array.from({ length: 2 * 10 }, () => rng.int(16));
    return model.forward(tf.tensor2d(ids, [2, 10], 'int32'), forwardContext(new Rng(0), false)).dataSync() as Float32Array;
  });
}

/** Copies of every base weight (the adapter child left out). */
export function baseWeights(model: Model): Map<string, Float32Array> {
  return new Map(
    model
      .namedParameters()
      .filter(([n]) => !n.startsWith('adapter.'))
      .map(([n, v]) => [n, Float32Array.from(v.dataSync() as Float32Array)]),
  );
}

/** Names of base tensors whose bytes differ from `before`. */
export function changedWeights(model: Model, before: Map<string, Float32Array>): string[] {
  const now = baseWeights(model);
  const changed: string[] = [];
  for (const [n, a] of before) {
    const b = now.get(n)!;
    const ua = new Uint32Array(a.buffer);
    const ub = new Uint32Array(b.buffer);
    if (ua.length !== ub.length || ua.some((x, i) => x !== ub[i])) changed.push(n);
  }
  return changed;
}

/** N steps of AdamW with weight decay 0.1 and clipping 1.0 (the frozen-base check of docs/finetune.md). */
export function trainSteps(adapted: AdaptedModel, steps = 4) {
  const tr = adapted.trainer(patternSource(), { steps, batchSize: 4, seqLen: 10, lr: 3e-2, warmup: 0, weightDecay: 0.1, clip: 1, evalBatches: 1, seed: 3 });
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) losses.push(tr.trainStep().loss);
  return { trainer: tr, losses };
}

/** Bitwise equality of two float arrays (−0 and +0 count as equal: adding an exact 0 may flip the sign of a zero). */
export function sameValues(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
