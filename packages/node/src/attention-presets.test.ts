/**
 * The attention-mixture presets (packages/attention/src/presets/attention-moe.ts) are in the default
 * registry, build with the documented layers, and train on the default corpus (Brown): the training
 * loss falls within a few small steps and validation runs.
 */
import { BamSoftMoA, MixtureOfAttentionHeads } from '@moelab/attention';
import { buildModel, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { expectLossFallsInFewSteps } from '../test/preset-training.js';
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
      expectLossFallsInFewSteps(model, data);
    });
  }
});
