import { beforeAll, describe, expect, it } from 'vitest';
import { patternSource, testRegistry } from '../../test/helpers.js';
import { AdamW, buildModel, type LanguageModel, type Module, tf, Trainer } from '../index.js';

beforeAll(async () => {
  await tf.ready();
});

const tinyMoE = {
  type: 'transformer-lm',
  vocabSize: 16,
  dModel: 16,
  contextLength: 12,
  stack: { groupSize: 1, repeats: 1 },
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 16 } },
  },
};

describe('masked updates', () => {
  it('AdamW with weight decay leaves every entry outside the mask bitwise unchanged, and moves the rest', () => {
    const p = tf.variable(tf.tensor2d([1, -2, 3, -0, 5, 6], [3, 2]));
    const before = Float32Array.from(p.dataSync() as Float32Array);
    const mask = tf.tensor2d([1, 1, 0, 0, 1, 1], [3, 2], 'bool');
    const opt = new AdamW([['w', p]], { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 }, new Map([['w', mask]]));
    for (let i = 0; i < 3; i++) opt.apply(new Map([['w', tf.onesLike(p)]]), 0.1);
    const after = p.dataSync() as Float32Array;
    const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer));
    expect(bits(Float32Array.from(after.slice(2, 4)))).toEqual(bits(Float32Array.from(before.slice(2, 4))));
    for (const i of [0, 1, 4, 5]) expect(after[i]).not.toBe(before[i]);
  });

  it('a trainer with a mask on one expert of a stacked bank trains only that slice; the mask shape is checked', () => {
    type M = Module & LanguageModel;
    const model = buildModel<M>(tinyMoE, testRegistry(), 1);
    const name = 'transformer.layers.0.ffn.experts.w1';
    const w1 = model.namedParameters().find(([n]) => n === name)![1];
    const before = Float32Array.from(w1.dataSync() as Float32Array);
    const [E, d, h] = w1.shape as [number, number, number];
    const mask = tf.concat([tf.ones([1, d, h]), tf.zeros([E - 1, d, h])]);
    const tr = new Trainer(
      model,
      patternSource(16),
      { steps: 3, batchSize: 4, seqLen: 12, lr: 1e-2, weightDecay: 0.1, warmup: 0 },
      { updateMasks: new Map([[name, mask]]) },
    );
    for (let i = 0; i < 3; i++) tr.trainStep();
    const after = w1.dataSync() as Float32Array;
    const per = d * h;
    expect(Array.from(new Uint32Array(after.slice(per).buffer))).toEqual(Array.from(new Uint32Array(before.slice(per).buffer)));
    expect(after.slice(0, per).some((x, i) => x !== before[i])).toBe(true);
    expect(() => new Trainer(model, patternSource(16), { seqLen: 12 }, { updateMasks: new Map([[name, tf.ones([2, 2])]]) })).toThrow(
      `${name}: update mask has shape [2,2], the parameter [${E},${d},${h}]`,
    );
    expect(() => new Trainer(model, patternSource(16), { seqLen: 12 }, { updateMasks: new Map([['nope', tf.ones([2, 2])]]) })).toThrow(
      'nope: update mask for "nope", which is not a trained parameter',
    );
  });
});
