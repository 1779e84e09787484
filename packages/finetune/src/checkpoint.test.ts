import { readSafetensors, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { logitsOf, registry, sameValues, tinyModel, trainSteps } from '../test/helpers.js';
import type { NodeSpec } from '@moelab/core';
import { AdaptedModel, decodeAdapterCheckpoint, encodeAdapterCheckpoint } from './index.js';

beforeAll(async () => {
  await tf.ready();
});

const methods: NodeSpec[][] = [
  [{ type: 'lora', rank: 2 }],
  [{ type: 'perft-r', experts: 3, topK: 2, rank: 2 }],
  [{ type: 'perft-e', rank: 2 }],
  [{ type: 'mov', experts: 2 }],
  [
    { type: 'mixlora', rank: 2 },
    { type: 'lora', rank: 2 },
  ],
];

describe('adapter checkpoints', () => {
  for (const nodes of methods) {
    const name = nodes.map((n) => (n as { type: string }).type).join('+');
    it(`${name}: base + saved adapter reproduces the fine-tuned logits bit for bit; the file holds adapter tensors only`, () => {
      const model = tinyModel(4);
      const adapted = new AdaptedModel(model, nodes, registry(), { seed: 9 });
      trainSteps(adapted, 2);
      const tuned = logitsOf(model);
      const { configJson, weights, config } = encodeAdapterCheckpoint(adapted, { step: 2, seed: 9, method: name });
      expect(config.base.hash).toBe(adapted.baseHash);
      const file = readSafetensors(weights);
      const baseNames = new Set(
        tinyModel(4)
          .namedParameters()
          .map(([n]) => n),
      );
      expect([...file.tensors.keys()].some((n) => baseNames.has(n))).toBe(false);
      expect([...file.tensors.values()].reduce((s, t) => s + t.data.length, 0)).toBe(adapted.counts().added);

      const fresh = tinyModel(4);
      const { adapted: loaded } = decodeAdapterCheckpoint(fresh, configJson, weights, registry());
      expect(sameValues(logitsOf(fresh), tuned)).toBe(true);
      expect(loaded.counts()).toEqual(adapted.counts());
    });
  }

  it('refuses a base with another hash, and tensors that do not match, in one line; the model stays as it was', () => {
    const model = tinyModel(4);
    const adapted = new AdaptedModel(model, [{ type: 'lora', rank: 2 }], registry());
    const { configJson, weights } = encodeAdapterCheckpoint(adapted, { step: 0, seed: 0 });
    const other = tinyModel(5);
    expect(() => decodeAdapterCheckpoint(other, configJson, weights, registry(), { config: 'runs/ft/adapter/adapter.json' })).toThrow(
      /^runs\/ft\/adapter\/adapter\.json: this adapter was trained on the base sha256:[0-9a-f]{12}…, but the model given is sha256:[0-9a-f]{12}… \(a different base or different weights\)$/,
    );
    const wrongRank = JSON.stringify({
      ...JSON.parse(configJson),
      adapters: [{ type: 'lora', rank: 3, alpha: 16, dropout: 0, initB: 'zero', targets: ['*.attention.q_proj', '*.attention.v_proj'] }],
    });
    const base = tinyModel(4);
    expect(() => decodeAdapterCheckpoint(base, wrongRank, weights, registry())).toThrow(
      /adapter\.safetensors: tensors do not match the adapters — wrong shape: transformer\.layers\.0\.attention\.q_proj\.lora_A \(adapter \[3,16\], file \[2,16\]\)/,
    );
    expect(base.children.has('adapter')).toBe(false);
    expect(() => decodeAdapterCheckpoint(base, '{"format":"x"}', weights, registry())).toThrow(
      'adapter.json: $.format: unknown adapter format "x" (expected "moelab-adapter-v1")',
    );
  });
});
