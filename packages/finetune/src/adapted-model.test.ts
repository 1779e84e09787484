import { type NodeSpec, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { baseWeights, changedWeights, logitsOf, registry, sameValues, tinyModel, trainSteps } from '../test/helpers.js';
import { AdaptedModel, baseContentHash } from './index.js';

beforeAll(async () => {
  await tf.ready();
});

// d = 16, 2 layers, E = 4 MLP experts (h = 16), top-2: the trainable counts are the formulas of docs/finetune.md.
const cases: { node: NodeSpec; trainable: number }[] = [
  { node: { type: 'lora', rank: 4 }, trainable: 2 * 2 * 4 * (16 + 16) },
  { node: { type: 'perft-s', rank: 4 }, trainable: 2 * (2 * 16 * 4) },
  { node: { type: 'perft-d', experts: 3, rank: 2 }, trainable: 2 * (3 * 2 * 16 * 2) },
  { node: { type: 'perft-r', experts: 4, topK: 2, rank: 2 }, trainable: 2 * (4 * 2 * 16 * 2 + 4 * 16) },
  { node: { type: 'perft-e', rank: 2 }, trainable: 2 * (4 * 2 * 16 * 2) },
  { node: { type: 'mov', experts: 3 }, trainable: 2 * 2 * (3 * 16 + 16 * 3) },
  { node: { type: 'molora', experts: 3, rank: 2 }, trainable: 2 * 4 * (3 * 2 * (16 + 16) + 16 * 3) },
  { node: { type: 'mixlora', rank: 2 }, trainable: 2 * 4 * 2 * (16 + 16 + (16 + 16)) },
];

describe('every adapter', () => {
  for (const { node, trainable } of cases) {
    const name = (node as { type: string }).type;
    it(`${name}: identity at init, exact trainable count, base bitwise unchanged after AdamW steps with decay 0.1 and clipping`, () => {
      const model = tinyModel();
      const before = logitsOf(model);
      const weights = baseWeights(model);
      const adapted = new AdaptedModel(model, [node], registry());
      expect(sameValues(logitsOf(model), before)).toBe(true);
      const counts = adapted.counts();
      expect(counts.trainable).toBe(trainable);
      expect(counts.added).toBe(trainable);
      expect(counts.frozen).toBe(model.parameterCount() - trainable);
      const { losses } = trainSteps(adapted, 4);
      expect(losses.every(Number.isFinite)).toBe(true);
      expect(changedWeights(model, weights)).toEqual([]);
      expect(sameValues(logitsOf(model), before)).toBe(false);
      adapted.detach();
      expect(sameValues(logitsOf(model), before)).toBe(true);
    });
  }
});

describe('AdaptedModel', () => {
  it('initB normal(1e-6) (the PERFT reference) starts near the base but not on it', () => {
    const model = tinyModel();
    const before = logitsOf(model);
    new AdaptedModel(model, [{ type: 'perft-s', rank: 4, initB: 'normal(1e-6)' }], registry());
    const after = logitsOf(model);
    const diff = Math.max(...after.map((x, i) => Math.abs(x - before[i]!)));
    expect(diff).toBeGreaterThan(0);
    expect(diff).toBeLessThan(1e-4);
  });

  it("drops the frozen base routers' aux losses and keeps the adapter router's; full fine-tuning keeps them", () => {
    const model = tinyModel();
    const adapted = new AdaptedModel(model, [{ type: 'perft-r', experts: 4, topK: 2, rank: 2 }], registry());
    const { trainer } = trainSteps(adapted, 1);
    const m = trainer.trainStep();
    expect(Object.keys(m.aux)).toEqual(['perft_balance']);
    adapted.detach();
    const full = new AdaptedModel(model, [{ type: 'lora', rank: 2 }], registry(), { trainBase: true });
    const mf = trainSteps(full, 1).trainer.trainStep();
    expect(Object.keys(mf.aux).sort()).toContain('switch_balance');
    expect(full.counts().frozen).toBe(0);
  });

  it('several adapter nodes at once; the base hash ignores adapters and changes with one bit of the base', () => {
    const model = tinyModel();
    const h0 = baseContentHash(model);
    expect(h0).toMatch(/^sha256:[0-9a-f]{64}$/);
    const adapted = new AdaptedModel(
      model,
      [
        { type: 'lora', rank: 2 },
        { type: 'perft-s', rank: 2 },
      ],
      registry(),
    );
    expect(adapted.baseHash).toBe(h0);
    expect(baseContentHash(model)).toBe(h0);
    expect(adapted.counts().added).toBe(2 * 2 * 2 * 32 + 2 * 2 * 16 * 2);
    adapted.detach();
    const [, w] = model.namedParameters()[0]!;
    const data = Float32Array.from(w.dataSync() as Float32Array);
    new Uint32Array(data.buffer)[0]! ^= 1;
    w.assign(tf.tensor(data, w.shape));
    expect(baseContentHash(model)).not.toBe(h0);
  });

  it('bad input: in-expert on a dense model; a second attach; an empty list', () => {
    const dense = tinyModel(1, { ffn: { type: 'dense', hidden: 16 } });
    expect(() => new AdaptedModel(dense, [{ type: 'perft-e' }], registry())).toThrow(
      '$.adapter.targets[0]: target "*.ffn" matches transformer.layers.0.ffn (DenseFFN) and 1 more, but in-expert attaches to an MoE layer.',
    );
    const model = tinyModel();
    new AdaptedModel(model, [{ type: 'lora' }], registry());
    expect(() => new AdaptedModel(model, [{ type: 'lora' }], registry())).toThrow('this model already has adapters attached (detach them first)');
    expect(() => new AdaptedModel(tinyModel(), [], registry())).toThrow('$.adapters: no adapter given');
  });
});
