import { beforeAll, describe, expect, it } from 'vitest';
import { patternSource, testRegistry } from '../../test/helpers.js';
import { buildModel, type LanguageModel, type Module, tf, Trainer } from '../index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

export const tinyMoE = {
  type: 'transformer-lm',
  vocabSize: 16,
  dModel: 16,
  contextLength: 12,
  stack: { groupSize: 1, repeats: 2 },
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 16 } },
  },
};

type M = Module & LanguageModel;
const cfg = { steps: 40, batchSize: 8, seqLen: 12, lr: 1e-2, warmup: 4, evalBatches: 2, seed: 7 };

describe('trainer', () => {
  it('a tiny MoE LM learns (loss falls) and evaluation is finite', () => {
    const model = buildModel<M>(tinyMoE, testRegistry(), 1);
    const tr = new Trainer(model, patternSource(16), cfg);
    const before = tr.evaluate().loss;
    const losses: number[] = [];
    for (let i = 0; i < 40; i++) losses.push(tr.trainStep().loss);
    const after = tr.evaluate().loss;
    expect(mean(losses.slice(-5))).toBeLessThan(mean(losses.slice(0, 5)) * 0.6);
    expect(after).toBeLessThan(before * 0.6);
  });

  it('same seed gives the same run; a different seed a different one', () => {
    const run = (seed: number) => {
      const model = buildModel<M>(tinyMoE, testRegistry(), seed);
      const tr = new Trainer(model, patternSource(16), { ...cfg, seed });
      const l = [0, 1, 2, 3, 4].map(() => tr.trainStep().loss);
      model.dispose();
      return l;
    };
    expect(run(3)).toEqual(run(3));
    expect(run(3)).not.toEqual(run(4));
  });

  it('gradient accumulation of 2 micro-batches of 4 runs and reports the mean loss', () => {
    const model = buildModel<M>(tinyMoE, testRegistry(), 1);
    const tr = new Trainer(model, patternSource(16), { ...cfg, batchSize: 4, accumulate: 2 });
    const m = tr.trainStep();
    expect(m.tokens).toBe(2 * 4 * 12);
    expect(Number.isFinite(m.loss)).toBe(true);
    expect(m.routing.length).toBe(4); // 2 micro-batches x 2 layer calls
  });

  it('routing statistics every N steps equal the per-step ones at those steps, and never change training', () => {
    const run = (statsEvery: number) => {
      const model = buildModel<M>(tinyMoE, testRegistry(), 2);
      const tr = new Trainer(model, patternSource(16), { ...cfg, steps: 7, statsEvery });
      const steps = Array.from({ length: 7 }, () => tr.trainStep());
      model.dispose();
      return steps;
    };
    const every = run(1);
    const sparse = run(3);
    // Step 1, every 3rd and the last one (7).
    expect(sparse.map((m) => m.stats)).toEqual([true, false, true, false, false, true, true]);
    sparse.forEach((m, i) => {
      expect(m.loss).toBe(every[i]!.loss);
      expect(every[i]!.routing).toHaveLength(2);
      if (m.stats) expect(m.routing).toEqual(every[i]!.routing);
      else expect(m.routing).toEqual([]);
    });
    // The routing distribution's statistics are among them.
    expect(sparse[2]!.routing[0]!.entropy).toEqual(expect.any(Number));
    expect(sparse[2]!.routing[0]!.zLoss).toEqual(expect.any(Number));
  });

  it('refuses a statsEvery that is not a positive integer', () => {
    const model = buildModel<M>(tinyMoE, testRegistry(), 1);
    expect(() => new Trainer(model, patternSource(16), { ...cfg, statsEvery: 0 })).toThrow('train.statsEvery: statsEvery must be a positive integer, got 0');
    model.dispose();
  });

  it('leaks no tensors across 50 steps', () => {
    const model = buildModel<M>(tinyMoE, testRegistry(), 1);
    const tr = new Trainer(model, patternSource(16), { ...cfg, steps: 60, batchSize: 2, seqLen: 8, clip: 0.5 });
    tr.trainStep();
    tr.evaluate(1);
    const start = tf.memory().numTensors;
    for (let i = 0; i < 50; i++) tr.trainStep();
    tr.evaluate(1);
    expect(tf.memory().numTensors).toBe(start);
  });

  it('the optimiser holds exactly its two moments per parameter, and releases them on dispose', () => {
    const model = buildModel<M>(tinyMoE, testRegistry(), 1);
    const before = tf.memory().numTensors;
    const tr = new Trainer(model, patternSource(16), cfg);
    expect(tf.memory().numTensors - before).toBe(2 * tr.optimizer.params.length);
    tr.optimizer.dispose();
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });

  it('refuses a window longer than the context', () => {
    const model = buildModel<M>(tinyMoE, testRegistry(), 1);
    expect(() => new Trainer(model, patternSource(16), { ...cfg, seqLen: 13 })).toThrow(/seqLen 13 exceeds the model's contextLength 12/);
  });
});

describe('layer grouping', () => {
  it('repeats share one parameter set: G=1, R=2 has the parameters of one block', () => {
    const reg = testRegistry();
    const shared = buildModel<M>(tinyMoE, reg, 1);
    const twoLayers = buildModel<M>({ ...tinyMoE, stack: { groupSize: 2, repeats: 1 } }, reg, 1);
    const blockParams = (m: Module) =>
      m
        .namedParameters()
        .filter(([n]) => n.startsWith('transformer.'))
        .reduce((s, [, v]) => s + v.size, 0);
    expect(blockParams(twoLayers)).toBe(2 * blockParams(shared));
    expect(shared.namedParameters().some(([n]) => n.startsWith('transformer.layers.1'))).toBe(false);
  });

  it('distinct layers get distinct initialisations', () => {
    const m = buildModel<M>({ ...tinyMoE, stack: { groupSize: 2, repeats: 1 } }, testRegistry(), 1);
    const p = new Map(m.namedParameters());
    const a = p.get('transformer.layers.0.attention.q_proj.weight')!.dataSync();
    const b = p.get('transformer.layers.1.attention.q_proj.weight')!.dataSync();
    expect(a[0]).not.toBe(b[0]);
  });
});

function mean(a: number[]): number {
  return a.reduce((s, x) => s + x, 0) / a.length;
}
