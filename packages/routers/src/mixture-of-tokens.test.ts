import { buildModel, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, lossRatio, makeFFN, probe, registry, tinyLM, trainLosses } from '../test/helpers.js';
import type { MixtureOfTokensRouter } from './mixture-of-tokens.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const moe = (router: Record<string, unknown>) => ({ type: 'moe', experts: 3, router, expert: { type: 'mlp', hidden: 8 } });

describe('mixture-of-tokens router', () => {
  it('merge weights sum to 1 over each group; permuting the examples of a group permutes the outputs', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'mixture-of-tokens', groupSize: 2 }), 8);
    const B = 4;
    const T = 3;
    const xs = new Rng(1).normalArray(B * T * 8);
    const ctx = forwardContext(new Rng(1), false);
    const y = layer.forward(tf.tensor3d(xs, [B, T, 8]), ctx).arraySync() as number[][][];
    // per token probs are w[e, i] of its group: for each (group, expert) the weights over the 2 examples sum to 1
    const p = ctx.routing[0]!;
    expect(p.counts).toEqual([6, 6, 6]); // G = B·T/g groups, each expert runs once per group
    // swap examples 0 and 1 (one group) -> their outputs swap, examples 2, 3 unchanged
    const xp = Float32Array.from(xs);
    xp.set(xs.subarray(T * 8, 2 * T * 8), 0);
    xp.set(xs.subarray(0, T * 8), T * 8);
    const yp = layer.forward(tf.tensor3d(xp, [B, T, 8]), forwardContext(new Rng(1), false)).arraySync() as number[][][];
    for (let t = 0; t < T; t++)
      for (let j = 0; j < 8; j++) {
        expect(yp[0]![t]![j]).toBeCloseTo(y[1]![t]![j]!, 5);
        expect(yp[1]![t]![j]).toBeCloseTo(y[0]![t]![j]!, 5);
        expect(yp[3]![t]![j]).toBeCloseTo(y[3]![t]![j]!, 6);
      }
  });

  it('weights are a softmax over the g tokens of a group (sum 1)', () => {
    const r = makeFFN<MoELayer>(moe({ type: 'mixture-of-tokens', groupSize: 2 }), 8).router as MixtureOfTokensRouter;
    const order = r.groupOrder(4, 3);
    // group (bb, t) holds examples 2bb, 2bb+1 at position t
    expect(Array.from(order.slice(0, 6))).toEqual([0, 3, 1, 4, 2, 5]);
    const x = tf.tensor2d(new Rng(2).normalArray(12 * 8), [12, 8]);
    const logits = tf.reshape(tf.matMul(tf.gather(x, tf.tensor1d(order, 'int32')), r.controller, false, true), [6, 2, 3]);
    const w = tf.softmax(tf.transpose(logits, [0, 2, 1]));
    for (const v of tf.sum(w, 2).dataSync()) expect(v).toBeCloseTo(1, 6);
  });

  it('the batch must be a multiple of g; a causal LM needs allowBatchDependent; sequence grouping is never causal', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'mixture-of-tokens', groupSize: 4 }), 8);
    expect(() => layer.forward(tf.zeros([3, 2, 8]), forwardContext(new Rng(1), false))).toThrow(/batch size 3 is not a multiple of groupSize 4/);
    expect(() => buildModel(tinyLM({ type: 'mixture-of-tokens' }), registry(), 0)).toThrow(
      /\$\.block\.ffn\.router: this router is batch-dependent .* Set allowBatchDependent: true/,
    );
    expect(() => buildModel(tinyLM({ type: 'mixture-of-tokens', grouping: 'sequence' }, { allowBatchDependent: true }), registry(), 0)).toThrow(/not causal/);
    expect(() => makeFFN(moe({ type: 'mixture-of-tokens', groupSize: 1 }))).toThrow(/\$\.block\.ffn\.router\.groupSize/);
  });

  it('gradients w.r.t. the controller and experts match finite differences', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'mixture-of-tokens', groupSize: 2 }), 8);
    const x = tf.tensor3d(new Rng(3).normalArray(2 * 3 * 8), [2, 3, 8]);
    const vars = layer.namedParameters().map(([, v]) => v);
    for (const e of gradCheck(() => probe(layer.forward(x, forwardContext(new Rng(1), true))), vars, 8, 1e-2)) expect(e).toBeLessThan(1e-2);
  });

  it('a tiny causal LM with batch grouping (allowBatchDependent) learns', () => {
    expect(lossRatio(trainLosses(tinyLM({ type: 'mixture-of-tokens', groupSize: 2 }, { allowBatchDependent: true })))).toBeLessThan(0.85);
  });
});
