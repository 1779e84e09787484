/**
 * The attention-mixture presets (packages/attention/src/presets/attention-moe.ts) are in the default
 * registry, build with the documented layers, and train on the default corpus (Brown): the training
 * loss falls within a few small steps and validation runs.
 */
import { BamSoftMoA, MixtureOfAttentionHeads } from '@moelab/attention';
import { buildModel, Trainer, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { CorpusTokens, loadCorpus } from './corpus.js';
import { createDefaultRegistry } from './registry.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('attention-mixture presets on the default corpus', () => {
  const registry = createDefaultRegistry();
  const data = new CorpusTokens(loadCorpus('brown'));
  const cases: [string, (m: unknown) => boolean][] = [
    ['bam-attn-tiny', (m) => m instanceof BamSoftMoA],
    ['moa-tiny', (m) => m instanceof MixtureOfAttentionHeads],
  ];

  for (const [name, isMixture] of cases) {
    it(`${name}: in the registry, attention mixtures in both layers, loss falls in a few steps`, () => {
      const preset = registry.preset(name, 'preset');
      expect(preset.train).toMatchObject({ batchSize: 16, seqLen: 128, steps: 400 });
      const model = buildModel(preset.spec, registry, 1);
      expect(model.modules().filter(isMixture)).toHaveLength(2);
      const steps = 5;
      const trainer = new Trainer(model, data, { batchSize: 4, seqLen: 16, steps, lr: 1e-2, warmup: 2, evalBatches: 1, seed: 5 });
      const losses: number[] = [];
      for (let i = 0; i < steps; i++) losses.push(trainer.trainStep().ce);
      expect(losses.every(Number.isFinite)).toBe(true);
      const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
      // bytes start near ln 256 = 5.55; five steps learn the byte distribution of English text
      expect(losses[0]).toBeGreaterThan(5);
      expect(mean(losses.slice(-2))).toBeLessThan(losses[0]! - 1);
      expect(Number.isFinite(trainer.evaluate(1).loss)).toBe(true);
    });
  }
});
