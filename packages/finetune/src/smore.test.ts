/**
 * The `smore` (block-parallel) and `smore-linear` (linear-wrap) adapters in a tiny model: identity at
 * init, a frozen base after AdamW steps with weight decay and clipping, exact parameter counts, only the
 * adapters' balance loss in the trained loss, the adapter tensors reproducing the fine-tuned logits on a
 * fresh base, and one-line errors for bad pool lists.
 */
import { tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { baseWeights, changedWeights, logitsOf, registry, sameValues, tinyModel, trainSteps } from '../test/helpers.js';
import { AdaptedModel } from './adapted-model.js';
import type { SMoREBlockAdapter, SMoRELinearAdapter } from './smore.js';
import { smoreParameterCount } from './smore-layer.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const D = 16;
const node = { type: 'smore', ranks: [2, 4], experts: [3, 3], fanout: [2, 2], gateDims: [4, 4], dDown: 4 };

describe("smore adapters (S'MoRE)", () => {
  it('block-parallel on an MoE base: identity at init, a frozen base after AdamW with decay and clipping, only its own balance loss', () => {
    const model = tinyModel();
    const before = logitsOf(model);
    const weights = baseWeights(model);
    const adapted = new AdaptedModel(model, [node], registry());
    expect(sameValues(logitsOf(model), before)).toBe(true);
    const { trainer, losses } = trainSteps(adapted, 5);
    expect(Object.keys(trainer.trainStep().aux)).toEqual(['smore_balance']);
    expect(losses.at(-1)!).toBeLessThan(losses[0]!);
    expect(changedWeights(model, weights)).toEqual([]);
    expect(sameValues(logitsOf(model), before)).toBe(false);
    trainer.optimizer.dispose();
    adapted.detach();
    expect(sameValues(logitsOf(model), before)).toBe(true);
    model.dispose();
  });

  it('counts exactly P_exp + P_rt per site (d_in = d_out = d)', () => {
    const model = tinyModel();
    const adapted = new AdaptedModel(model, [node], registry());
    const per = smoreParameterCount({ dIn: D, dOut: D, ranks: [2, 4], experts: [3, 3], gateDims: [4, 4], dDown: 4 }).total;
    expect(adapted.counts()).toMatchObject({ trainable: 2 * per, added: 2 * per });
    expect(adapted.adapterParameters().map(([n]) => n)).toContain('adapter.transformer.layers.1.ffn.smore.moe_W_final.default');
    adapted.detach();
    model.dispose();
  });

  it('the adapter tensors reproduce the fine-tuned logits on a fresh copy of the base', () => {
    const dense = { ...node, gate: 'dense', fanout: [3, 3] };
    const model = tinyModel();
    const adapted = new AdaptedModel(model, [dense], registry());
    const { trainer } = trainSteps(adapted, 2);
    const tuned = logitsOf(model);
    const stored = adapted.adapters.map((a) => a.checkpointTensors());
    const fresh = tinyModel();
    const again = new AdaptedModel(fresh, [dense], registry(), { seed: 9 });
    expect(sameValues(logitsOf(fresh), tuned)).toBe(false);
    again.adapters.forEach((a, i) => {
      a.loadCheckpointTensors(stored[i] as Map<string, { shape: number[]; data: Float32Array }>);
    });
    expect(sameValues(logitsOf(fresh), tuned)).toBe(true);
    trainer.optimizer.dispose();
    adapted.detach();
    again.detach();
    model.dispose();
    fresh.dispose();
  });

  it("linear-wrap on a dense model's FFN projections (the published placement); Δ is no fixed weight change", () => {
    const model = tinyModel(1, { ffn: { type: 'dense', hidden: 24 } });
    const before = logitsOf(model);
    const adapted = new AdaptedModel(model, [{ ...node, type: 'smore-linear' }], registry());
    expect(adapted.adapters.map((a) => a.sitePath)).toEqual([
      'transformer.layers.0.ffn.w1',
      'transformer.layers.0.ffn.w2',
      'transformer.layers.1.ffn.w1',
      'transformer.layers.1.ffn.w2',
    ]);
    expect(sameValues(logitsOf(model), before)).toBe(true);
    const first = adapted.adapters[0] as SMoRELinearAdapter;
    expect(first.smore.options).toMatchObject({ dIn: D, dOut: 24 });
    expect(first.mergedWeight()).toMatch(/^S'MoRE routes every token through its own tree/);
    adapted.detach();
    model.dispose();
  });

  it('one-line errors for pool lists that do not match the ranks', () => {
    const model = tinyModel();
    expect(() => new AdaptedModel(model, [{ ...node, experts: [3] }], registry())).toThrow('$.adapter.experts: experts has 1 entries but ranks has 2');
    expect(() => new AdaptedModel(model, [{ ...node, alpha: [1, 2, 3] }], registry())).toThrow('$.adapter.alpha: alpha has 3 entries but ranks has 2');
    expect(() => new AdaptedModel(model, [{ ...node, fanout: [4, 2] }], registry())).toThrow('$.adapter.fanout[0]: fan-out 4 exceeds the 3 experts of pool 0');
    expect(() => new AdaptedModel(model, [{ ...node, gate: 'dense' }], registry())).toThrow('a dense gate picks every expert');
    expect(model.children.has('adapter')).toBe(false);
    const block = new AdaptedModel(model, [{ type: 'smore' }], registry());
    expect((block.adapters[0] as SMoREBlockAdapter).smore.options).toMatchObject({ ranks: [4, 8], experts: [4, 4], fanout: [2, 2], gateDims: [16, 16] });
    block.detach();
    model.dispose();
  });
});
