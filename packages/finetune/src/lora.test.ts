import { tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { baseWeights, changedWeights, logitsOf, registry, sameValues, tinyModel, trainSteps } from '../test/helpers.js';
import { AdaptedModel } from './index.js';

beforeAll(async () => {
  await tf.ready();
});

describe('lora (linear-wrap)', () => {
  it('equals the base exactly at init, and changes nothing in the base after AdamW steps with decay and clipping', () => {
    const model = tinyModel();
    const before = logitsOf(model);
    const weights = baseWeights(model);
    const adapted = new AdaptedModel(model, [{ type: 'lora', rank: 4 }], registry());
    expect(sameValues(logitsOf(model), before)).toBe(true);
    const { losses } = trainSteps(adapted, 6);
    expect(losses.at(-1)!).toBeLessThan(losses[0]!);
    expect(changedWeights(model, weights)).toEqual([]);
    expect(sameValues(logitsOf(model), before)).toBe(false);
    adapted.detach();
    expect(sameValues(logitsOf(model), before)).toBe(true);
    expect(model.namedParameters().every(([, v]) => v.trainable)).toBe(true);
  });

  it('counts r·(d_in + d_out) per wrapped Linear; only adapter tensors are in the optimiser', () => {
    const model = tinyModel();
    const adapted = new AdaptedModel(model, [{ type: 'lora', rank: 4 }], registry());
    // W_q and W_v of 2 layers, d = 16: 2 · 2 · 4 · (16 + 16)
    expect(adapted.counts()).toEqual({ trainable: 512, frozen: model.parameterCount() - 512, base: model.parameterCount() - 512, added: 512 });
    const tr = adapted.trainer({ batch: () => new Int32Array(0) }, { seqLen: 10 });
    expect(tr.params.map(([n]) => n)).toEqual([
      'adapter.transformer.layers.0.attention.q_proj.lora_A',
      'adapter.transformer.layers.0.attention.q_proj.lora_B',
      'adapter.transformer.layers.0.attention.v_proj.lora_A',
      'adapter.transformer.layers.0.attention.v_proj.lora_B',
      'adapter.transformer.layers.1.attention.q_proj.lora_A',
      'adapter.transformer.layers.1.attention.q_proj.lora_B',
      'adapter.transformer.layers.1.attention.v_proj.lora_A',
      'adapter.transformer.layers.1.attention.v_proj.lora_B',
    ]);
  });

  it('folds into the base weight: W0 + (α/r) B A gives the adapted logits', () => {
    const model = tinyModel();
    const adapted = new AdaptedModel(model, [{ type: 'lora', rank: 2, targets: ['*.o_proj'] }], registry());
    trainSteps(adapted, 3);
    const tuned = logitsOf(model);
    const deltas = adapted.adapters.map((a) => [a.sitePath, (a as import('./lora.js').LoRA).mergedWeight()] as const);
    adapted.detach();
    const byName = new Map(model.namedParameters());
    for (const [path, d] of deltas) {
      const w = byName.get(`${path}.weight`)!;
      w.assign(tf.add(w, d));
    }
    const merged = logitsOf(model);
    expect(Math.max(...merged.map((x, i) => Math.abs(x - tuned[i]!)))).toBeLessThan(1e-5);
  });

  it('bad input: a glob that matches nothing, a glob on the wrong kind of module, a rank above the width, an unknown option', () => {
    const model = tinyModel();
    expect(() => new AdaptedModel(model, [{ type: 'lora', targets: ['*.attn.wq'] }], registry())).toThrow(
      /^\$\.adapter\.targets\[0\]: target "\*\.attn\.wq" matches no module of the model\./,
    );
    expect(() => new AdaptedModel(model, [{ type: 'lora', targets: ['*.attention'] }], registry())).toThrow(
      /matches transformer\.layers\.0\.attention \(MultiHeadAttention\) and 1 more, but linear-wrap attaches to a Linear module/,
    );
    expect(() => new AdaptedModel(model, [{ type: 'lora', rank: 17 }], registry())).toThrow(
      'transformer.layers.0.attention.q_proj: rank 17 exceeds the width of this layer (16 -> 16): a low-rank update needs rank <= 16',
    );
    expect(() => new AdaptedModel(model, [{ type: 'lora', rnak: 4 }], registry())).toThrow(/rnak/);
    expect(() => new AdaptedModel(model, [{ type: 'lroa' }], registry())).toThrow(/unknown adapter "lroa"\. Did you mean: lora\?/);
    // Every failure left the model as it was.
    expect(model.children.has('adapter')).toBe(false);
    expect(model.namedParameters().every(([, v]) => v.trainable)).toBe(true);
  });
});
