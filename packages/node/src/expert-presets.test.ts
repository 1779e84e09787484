/**
 * The expert-catalogue presets `monet-tiny` and `peer-tiny` (packages/experts/src/presets.ts) are in the
 * default registry, build at the documented sizes, and train on the default corpus (Brown): the training
 * loss falls within a few small steps and validation runs in eval mode (BN buffers, no batch statistics).
 */
import { buildModel, tf } from '@moelab/core';
import { MonetLayer, PEERLayer } from '@moelab/experts';
import { beforeAll, describe, expect, it } from 'vitest';
import { expectLossFallsInFewSteps } from '../test/preset-training.js';
import { CorpusTokens, loadCorpus } from './corpus.js';
import { createDefaultRegistry } from './registry.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('expert presets on the default corpus', () => {
  const registry = createDefaultRegistry();
  const data = new CorpusTokens(loadCorpus('brown'));

  for (const name of ['monet-tiny', 'peer-tiny']) {
    it(`${name}: in the registry, documented size, loss falls in a few steps`, () => {
      const preset = registry.preset(name, 'preset');
      expect(preset.train).toMatchObject({ batchSize: 16, seqLen: 128, steps: 400 });
      const model = buildModel(preset.spec, registry, 1);
      const layers = model.modules().filter((m) => m instanceof MonetLayer || m instanceof PEERLayer);
      expect(layers).toHaveLength(2);
      if (name === 'monet-tiny') {
        const m = layers[0] as MonetLayer;
        expect(m.numExperts).toBe(1024);
        expect(m.parameterCount()).toBe(MonetLayer.parameterCount(128, 32, 8, 4, true));
      } else {
        const p = layers[0] as PEERLayer;
        expect(p.numExperts).toBe(4096);
        expect(p.parameterCount()).toBe(PEERLayer.parameterCount(128, 4096, 4, 32));
      }
      expectLossFallsInFewSteps(model, data);
    });
  }
});
