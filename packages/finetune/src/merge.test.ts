import { tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { logitsOf, registry, tinyModel, trainSteps } from '../test/helpers.js';
import { AdaptedModel, mergeAdapters } from './index.js';

beforeAll(async () => {
  await tf.ready();
});

const maxDiff = (a: Float32Array, b: Float32Array) => Math.max(...a.map((x, i) => Math.abs(x - b[i]!)));

describe('mergeAdapters', () => {
  for (const nodes of [
    [{ type: 'lora', rank: 2 }],
    [{ type: 'mov', experts: 1 }],
    [{ type: 'mov', experts: 1, side: 'input', targets: ['*.o_proj'] }],
    [{ type: 'mixlora', rank: 2 }],
  ]) {
    it(`${nodes[0]!.type}${'side' in nodes[0]! ? ' (input side)' : ''}: the merged base gives the adapted logits, with no adapter left`, () => {
      const model = tinyModel(2);
      const adapted = new AdaptedModel(model, nodes, registry());
      trainSteps(adapted, 3);
      const tuned = logitsOf(model);
      const merged = mergeAdapters(adapted);
      expect(merged.children.has('adapter')).toBe(false);
      expect(maxDiff(logitsOf(merged), tuned)).toBeLessThan(1e-4);
    });
  }

  it('refuses block-parallel and input-dependent adapters, naming the site and the reason; nothing changes', () => {
    const model = tinyModel(2);
    const before = logitsOf(model);
    const adapted = new AdaptedModel(model, [{ type: 'perft-r', rank: 2 }], registry());
    expect(() => mergeAdapters(adapted)).toThrow(
      'transformer.layers.0.ffn: cannot merge: PerftR adds a path beside the feed-forward block; the base has no weight it could fold into (and 1 more site); keep it as an adapter (`moelab eval <base> --adapter <dir>`)',
    );
    const molora = new AdaptedModel(tinyModel(2), [{ type: 'molora', experts: 2, rank: 2 }], registry());
    expect(() => mergeAdapters(molora)).toThrow(/cannot merge: MoLoRA mixes its experts per token/);
    adapted.detach();
    expect(maxDiff(logitsOf(model), before)).toBe(0);
  });
});
