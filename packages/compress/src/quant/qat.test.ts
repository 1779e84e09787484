/**
 * 2-bit quantization-aware training on a tiny LM (d 16, 4 SwiGLU experts of 16, top-2) trained
 * briefly in float on a periodic token stream: after a few straight-through steps the 2-bit model
 * has a lower loss on held-out windows than plain 2-bit rounding of the same model; only the targets
 * move; bad options are one-line errors.
 */
import { buildModel, crossEntropy, forwardContext, type NodeSpec, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../../test/registry.js';
import { windowsLoss } from '../windows.js';
import type { Model } from '../surgery.js';
import { selectTargets } from './format.js';
import { quantizationAwareTraining } from './qat.js';
import { dequantizeTensor, type QuantOptions, quantizeTensor } from './quantize.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const spec: NodeSpec = {
  type: 'transformer-lm',
  vocabSize: 32,
  dModel: 16,
  contextLength: 12,
  stack: { groupSize: 1, repeats: 1 },
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'glu', hidden: 16 } },
  },
};

/** Windows of 13 tokens from a stream with a period of 7 (learnable, so quantization has something to lose). */
const stream = Int32Array.from({ length: 400 }, (_, i) => [3, 9, 14, 9, 22, 5, 30][i % 7]! + ((i * 13) % 5 === 0 ? 1 : 0));
const windowsAt = (offsets: number[]) => offsets.map((o) => stream.subarray(o, o + 13));
const train = windowsAt(Array.from({ length: 16 }, (_, i) => i * 13));
const held = windowsAt(Array.from({ length: 8 }, (_, i) => 220 + i * 17));
const q2: QuantOptions = { bits: 2, group: 0, scheme: 'symmetric' };

function trainedModel(): Model {
  const model = buildModel<Model>(spec, testRegistry(), 3);
  const opt = tf.train.adam(1e-2);
  for (let step = 0; step < 40; step++) {
    const part = train.slice((step * 4) % 16, ((step * 4) % 16) + 4);
    tf.tidy(() => {
      const batch = tf.tensor2d(Int32Array.from(part.flatMap((w) => Array.from(w))), [4, 13], 'int32');
      opt.minimize(
        () => crossEntropy(model.forward(tf.slice(batch, [0, 0], [4, 12]), forwardContext(new Rng(0), false)), tf.slice(batch, [0, 1], [4, 12])) as tf.Scalar,
      );
    });
  }
  opt.dispose();
  return model;
}

/** The loss of the model with its routed experts rounded to 2 bits (the weights restored afterwards). */
function roundedLoss(model: Model): number {
  const params = new Map(model.namedParameters());
  const saved = selectTargets(model).map((name) => {
    const v = params.get(name) as tf.Variable;
    const before = (v.dataSync() as Float32Array).slice();
    tf.tidy(() => v.assign(tf.tensor(dequantizeTensor(quantizeTensor(before, v.shape, q2)), v.shape)));
    return { v, before };
  });
  const loss = windowsLoss(model, held, 8);
  for (const { v, before } of saved) tf.tidy(() => v.assign(tf.tensor(before, v.shape)));
  return loss;
}

describe('quantization-aware training', () => {
  it('lowers the held-out loss of the 2-bit model below plain 2-bit rounding; only the targets move', () => {
    const model = trainedModel();
    const float = windowsLoss(model, held, 8);
    const rounded = roundedLoss(model);
    expect(rounded).toBeGreaterThan(float);
    const router = (
      model
        .namedParameters()
        .find(([n]) => n.endsWith('ffn.router.weight'))![1]
        .dataSync() as Float32Array
    ).slice();
    const report = quantizationAwareTraining(model, train, { ...q2, steps: 30, lr: 3e-3, batchSize: 4 });
    expect([...report.targets].sort()).toEqual([
      'transformer.layers.0.ffn.experts.w1',
      'transformer.layers.0.ffn.experts.w2',
      'transformer.layers.0.ffn.experts.w3',
    ]);
    expect(report.losses).toHaveLength(30);
    const afterQat = roundedLoss(model);
    expect(afterQat).toBeLessThan(rounded);
    expect(
      model
        .namedParameters()
        .find(([n]) => n.endsWith('ffn.router.weight'))![1]
        .dataSync(),
    ).toEqual(router);
  });

  it('bad options are one-line errors', () => {
    const model = buildModel<Model>(spec, testRegistry(), 3);
    expect(() => quantizationAwareTraining(model, train, { ...q2, steps: 0 })).toThrow(/--qat-steps: the QAT steps must be a positive integer, got 0/);
    expect(() => quantizationAwareTraining(model, [], { ...q2, steps: 2 })).toThrow(/--data: quantization-aware training has no windows to train on/);
    expect(() => quantizationAwareTraining(model, train, { ...q2, steps: 2, lr: -1 })).toThrow(/--qat-lr: the QAT learning rate must be positive, got -1/);
  });
});
