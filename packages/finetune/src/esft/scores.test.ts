/**
 * ESFT relevance scores (arXiv 2407.01906 §3.2) of a tiny MoE model: token scores are the routing
 * decisions recounted from the MoE layers' own per-token assignments, each layer's token scores sum to 1,
 * gate scores to the mean top-k probability mass (exactly 1 when k = E), the routers are restored
 * afterwards, and a dense model is a one-line error.
 */
import { attention } from '@moelab/attention';
import { buildModel, corePlugin, createRegistry, forwardContext, type LanguageModel, type Module, Rng, tf } from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import { esftLayerKey, esftLayers, esftScores } from './scores.js';
import { esftExpertConfig } from './select.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, routers, experts, attention);
type Model = Module & LanguageModel;

function tinyMoE(E: number, k: number, layers = 2): Model {
  return buildModel<Model>(
    {
      type: 'transformer-lm',
      vocabSize: 64,
      dModel: 16,
      contextLength: 16,
      stack: { groupSize: layers, repeats: 1 },
      block: {
        type: 'transformer',
        attention: { type: 'mha', heads: 2 },
        ffn: { type: 'moe', experts: E, router: { type: 'softmax-topk', k }, expert: { type: 'mlp', hidden: 8 } },
      },
    },
    registry,
    1,
  );
}

function batches(n: number, B = 2, T = 12): { ids: Int32Array; batchSize: number; seqLen: number }[] {
  const rng = new Rng(9);
  return Array.from({ length: n }, () => ({ ids: Int32Array.from({ length: B * T }, () => rng.int(64)), batchSize: B, seqLen: T }));
}

describe('ESFT scores', () => {
  it('token scores are the routing decisions / (tokens · k), summing to 1; gate scores sum below 1', () => {
    const model = tinyMoE(4, 2);
    const data = batches(3);
    const { file, tallies } = esftScores(model, data);
    expect(Object.keys(file.token_scores)).toEqual(['0', '1']);
    // Recount from the per-token assignments the MoE layers record themselves.
    const counts = new Map<string, number[]>();
    let tokens = 0;
    for (const b of data)
      tf.tidy(() => {
        const ctx = forwardContext(new Rng(0), false, { assignments: new Map() });
        model.forward(tf.tensor2d(b.ids, [b.batchSize, b.seqLen], 'int32'), ctx);
        for (const [path, calls] of ctx.assignments!)
          for (const call of calls) {
            const c = counts.get(esftLayerKey(path)) ?? [0, 0, 0, 0];
            for (const e of call.expertIndex) c[e]! += 1;
            counts.set(esftLayerKey(path), c);
          }
        tokens += b.batchSize * b.seqLen;
      });
    for (const t of tallies) {
      expect(t.decisions).toBe(tokens);
      const r = Object.values(file.token_scores[t.key]!);
      const g = Object.values(file.gate_scores[t.key]!);
      r.forEach((v, e) => {
        expect(v).toBeCloseTo(counts.get(t.key)![e]! / (tokens * 2), 12);
      });
      expect(Math.abs(r.reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-12);
      const gs = g.reduce((a, b) => a + b, 0);
      expect(gs).toBeGreaterThan(0.5); // top-2 of 4: at least half of the probability mass
      expect(gs).toBeLessThan(1);
    }
    const cfg = esftExpertConfig(file, { score: 'token', p: 0.2 });
    for (const ids of Object.values(cfg.experts)) expect(ids.length).toBeGreaterThanOrEqual(1);
    model.dispose();
  });

  it('with k = E every expert takes every token: r_i = 1/E and the gate scores sum to 1', () => {
    const model = tinyMoE(4, 4, 1);
    const { file } = esftScores(model, batches(2));
    for (const v of Object.values(file.token_scores['0']!)) expect(v).toBeCloseTo(0.25, 12);
    const gs = Object.values(file.gate_scores['0']!).reduce((a, b) => a + b, 0);
    expect(Math.abs(gs - 1)).toBeLessThan(1e-5);
    model.dispose();
  });

  it('leaves the routers as they were', () => {
    const model = tinyMoE(4, 2, 1);
    const [layer] = esftLayers(model);
    expect(Object.hasOwn(layer!.layer.router, 'route')).toBe(false);
    esftScores(model, batches(1));
    expect(Object.hasOwn(layer!.layer.router, 'route')).toBe(false);
    model.dispose();
  });

  it('a dense model is a one-line error', () => {
    const dense = buildModel<Model>(
      {
        type: 'transformer-lm',
        vocabSize: 64,
        dModel: 16,
        contextLength: 16,
        block: { type: 'transformer', attention: { type: 'mha', heads: 2 }, ffn: { type: 'dense', hidden: 32 } },
      },
      registry,
      0,
    );
    expect(() => esftScores(dense, batches(1), { where: 'runs/dense/checkpoint' })).toThrow(
      'runs/dense/checkpoint: ESFT fine-tunes the routed experts of an MoE model, but this model has no moe layer (a dense model: use lora or full fine-tuning)',
    );
    dense.dispose();
  });
});
