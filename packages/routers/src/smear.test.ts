import { buildModel, DispatchPlan, type ExpertBank, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, layerToyLosses, lossRatio, makeFFN, probe, registry, tinyLM, trainLosses } from '../test/helpers.js';
import type { SmearRouter } from './smear.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const moe = (router: Record<string, unknown>) => ({ type: 'moe', experts: 4, router, expert: { type: 'mlp', hidden: 8 } });

describe('smear router', () => {
  it('a one-hot merge weight runs exactly that expert; identical experts make the output independent of p', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'smear' }), 8);
    const bank = layer.experts as ExpertBank;
    const x = tf.tensor2d(new Rng(1).normalArray(6 * 8), [6, 8]);
    const group = new Int32Array(6);
    const ctx = forwardContext(new Rng(1), false);
    const merged = bank.applyMerged!(x, tf.tensor2d([[0, 0, 1, 0]]), group, ctx).dataSync();
    const direct = bank.apply(x, new DispatchPlan(Int32Array.from([0, 1, 2, 3, 4, 5]), new Int32Array(6).fill(2), 6, 4), null, ctx).dataSync();
    for (let i = 0; i < merged.length; i++) expect(merged[i]).toBeCloseTo(direct[i]!, 5);
    // identical experts: copy expert 0 into all
    for (const [, v] of bank.namedParameters()) v.assign(tf.tile(tf.slice(v, [0], [1]), [4, ...v.shape.slice(1).map(() => 1)]));
    const y1 = layer.forward(tf.reshape(x, [1, 6, 8]), ctx).dataSync();
    (layer.router as SmearRouter).weight.assign(tf.randomNormal([4, 8], 0, 3, 'float32', 7));
    const y2 = layer.forward(tf.reshape(x, [1, 6, 8]), ctx).dataSync();
    for (let i = 0; i < y1.length; i++) expect(y2[i]).toBeCloseTo(y1[i]!, 5);
  });

  it('flags follow routeOn: sequence-mean is refused in a causal LM; prefix-segment and bos are causal', () => {
    expect(() => buildModel(tinyLM({ type: 'smear' }), registry(), 0)).toThrow(/\$\.block\.ffn\.router: this router is batch-dependent and not causal/);
    const pre = makeFFN<MoELayer>(moe({ type: 'smear', routeOn: 'prefix-segment', segmentLength: 2 }), 8);
    expect(pre.router.flags).toEqual({ causalSafe: true, batchDependent: false });
    // causality: changing the last tokens leaves the earlier outputs unchanged
    const a = new Rng(2).normalArray(8 * 8);
    const b = Float32Array.from(a);
    for (let i = 6 * 8; i < 8 * 8; i++) b[i] = 3 - b[i]!;
    for (const layer of [pre, makeFFN<MoELayer>(moe({ type: 'smear', routeOn: 'bos' }), 8)]) {
      const ya = layer.forward(tf.tensor3d(a, [1, 8, 8]), forwardContext(new Rng(1), false)).dataSync();
      const yb = layer.forward(tf.tensor3d(b, [1, 8, 8]), forwardContext(new Rng(1), false)).dataSync();
      for (let i = 0; i < 6 * 8; i++) expect(yb[i]).toBeCloseTo(ya[i]!, 6);
    }
    // the first segment of prefix-segment routing has no summary: a uniform merge
    const ctx = forwardContext(new Rng(1), false);
    pre.forward(tf.tensor3d(a, [1, 8, 8]), ctx);
    expect(ctx.routing[0]!.entropy! / Math.log(4)).toBeLessThanOrEqual(1 + 1e-6);
    const first = (pre.router as SmearRouter).summaries(tf.tensor2d(a, [8, 8]), 1, 8);
    expect(Array.from(first.group)).toEqual([0, 0, 1, 1, 2, 2, 3, 3]);
    for (const v of tf.slice(first.summary, [0, 0], [1, 8]).dataSync()) expect(v).toBe(0);
  });

  it('gradients reach the router through the merged parameters (finite differences)', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'smear' }), 8);
    const x = tf.tensor3d(new Rng(3).normalArray(2 * 4 * 8), [2, 4, 8]);
    const vars = layer.namedParameters().map(([, v]) => v);
    for (const e of gradCheck(() => probe(layer.forward(x, forwardContext(new Rng(1), true))), vars, 7, 1e-2)) expect(e).toBeLessThan(1e-2);
  });

  it('a sequence-mean smear layer fits a toy regression; a prefix-segment smear LM learns', () => {
    expect(lossRatio(layerToyLosses(moe({ type: 'smear' })))).toBeLessThan(0.85);
    expect(lossRatio(trainLosses(tinyLM({ type: 'smear', routeOn: 'prefix-segment', segmentLength: 4 })))).toBeLessThan(0.85);
  });
});
