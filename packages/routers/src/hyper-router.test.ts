import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import type { HyperRouter } from './hyper-router.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('hyper-router', () => {
  it('only the embedding (d numbers) is trainable; the generated router changes only through it', () => {
    const r = makeRouter<HyperRouter>({ type: 'hyper-router', hyper: 8 }, 6, 4);
    const trainable = r.namedParameters().filter(([, v]) => v.trainable);
    expect(trainable.map(([n]) => n)).toEqual(['embedding']);
    expect(trainable[0]![1].size).toBe(6);
    const before = r.generate().weight.dataSync();
    r.embedding.assign(tf.add(r.embedding, 0.5));
    const after = r.generate().weight.dataSync();
    expect(Math.max(...after.map((v, i) => Math.abs(v - before[i]!)))).toBeGreaterThan(1e-3);
  });

  it('top-k of z = W x + b with softmax-over-selected weights; gradient w.r.t. the embedding matches finite differences', () => {
    const r = makeRouter<HyperRouter>({ type: 'hyper-router', hyper: 8 }, 6, 4);
    const x = tf.tensor2d(new Rng(1).normalArray(5 * 6), [5, 6]);
    const { plan, weight } = r.route(x, forwardContext(new Rng(1), false));
    const { weight: W, bias } = r.generate();
    const z = tf.add(tf.matMul(x, W, false, true), bias).arraySync() as number[][];
    const w = weight!.dataSync();
    for (let t = 0; t < 5; t++) {
      const top = z[t]!.map((v, e) => [v, e] as const).sort((a, b) => b[0] - a[0]);
      expect([plan.expertIndex[t], plan.expertIndex[5 + t]]).toEqual([top[0]![1], top[1]![1]]);
      const den = Math.exp(top[0]![0]) + Math.exp(top[1]![0]);
      expect(w[t]).toBeCloseTo(Math.exp(top[0]![0]) / den, 5);
    }
    const c = tf.tensor1d([0.5, -1, 2, 0.3, -0.7, 1.1, 0.2, -0.4, 0.9, -1.3]);
    const f = () => {
      const ctx = forwardContext(new Rng(1), true);
      const res = r.route(x, ctx);
      return tf.add(tf.sum(tf.mul(res.weight!, c)), ctx.aux[0]!.value) as tf.Scalar;
    };
    for (const e of gradCheck(f, [r.embedding], 2, 1e-3)) expect(e).toBeLessThan(2e-2);
  });

  it('rejects k > experts and k = 1 with the JSON path; a tiny HyperRouter LM learns', () => {
    expect(() => makeRouter({ type: 'hyper-router', k: 5 })).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds/);
    expect(() => makeRouter({ type: 'hyper-router', k: 1 })).toThrow(/\$\.block\.ffn\.router\.k: k = 1 with a softmax/);
    expect(lossRatio(trainLosses(tinyLM({ type: 'hyper-router', hyper: 16 })))).toBeLessThan(0.85);
  });
});
