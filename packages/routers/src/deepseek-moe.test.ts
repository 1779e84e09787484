import { forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeFFN, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { deviceBalanceLoss } from './balance.js';
import type { DeepSeekMoERouter } from './deepseek-moe.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('deepseek-moe router', () => {
  it('raw weights: the selected softmax probabilities, summing to Σ_top s ≤ 1', () => {
    const r = makeRouter<DeepSeekMoERouter>({ type: 'deepseek-moe', k: 3 }, 6, 8);
    const x = tf.tensor2d(new Rng(1).normalArray(10 * 6), [10, 6]);
    const { plan, weight, probs } = r.route(x, forwardContext(new Rng(1), false));
    const p = probs!.arraySync() as number[][];
    const w = weight!.dataSync();
    const sum = new Array(10).fill(0);
    for (let n = 0; n < plan.size; n++) {
      expect(w[n]).toBeCloseTo(p[plan.tokenIndex[n]!]![plan.expertIndex[n]!]!, 6);
      sum[plan.tokenIndex[n]!] += w[n]!;
    }
    for (let t = 0; t < 10; t++) {
      const top3 = [...p[t]!].sort((a, b) => b - a).slice(0, 3);
      expect(sum[t]).toBeCloseTo(top3[0]! + top3[1]! + top3[2]!, 5);
      expect(sum[t]).toBeLessThan(1);
    }
  });

  it('device-limited routing uses at most M devices; device loss is 1 under uniform routing', () => {
    const r = makeRouter<DeepSeekMoERouter>({ type: 'deepseek-moe', k: 3, devices: 4, deviceLimit: 2, deviceBalanceCoef: 0.05 }, 6, 8);
    const x = tf.tensor2d(new Rng(2).normalArray(30 * 6), [30, 6]);
    const ctx = forwardContext(new Rng(1), true);
    const { plan } = r.route(x, ctx);
    const per: Set<number>[] = Array.from({ length: 30 }, () => new Set());
    for (let n = 0; n < plan.size; n++) per[plan.tokenIndex[n]!]!.add(Math.floor(plan.expertIndex[n]! / 2));
    for (const s of per) expect(s.size).toBeLessThanOrEqual(2);
    expect(ctx.aux.map((a) => [a.name, a.coef])).toEqual([
      ['switch_balance', 0.01],
      ['device_balance', 0.05],
    ]);
    expect(deviceBalanceLoss(tf.fill([8, 8], 1 / 8) as tf.Tensor2D, new Array(8).fill(3), 3, 4).dataSync()[0]).toBeCloseTo(1, 6);
  });

  it('the shared-expert path does not depend on the router', () => {
    const layer = makeFFN<MoELayer>(
      { type: 'moe', experts: 4, router: { type: 'deepseek-moe', k: 2 }, expert: { type: 'mlp', hidden: 8 }, shared: { type: 'mlp', hidden: 8, count: 1 } },
      8,
    );
    for (const [, v] of layer.experts.namedParameters()) v.assign(tf.zerosLike(v));
    const x = tf.tensor3d(new Rng(3).normalArray(2 * 3 * 8), [2, 3, 8]);
    const y1 = layer.forward(x, forwardContext(new Rng(1), false)).dataSync();
    (layer.router as DeepSeekMoERouter).weight.assign(tf.randomNormal([4, 8], 0, 2, 'float32', 3));
    const y2 = layer.forward(x, forwardContext(new Rng(1), false)).dataSync();
    expect(Math.max(...y1.map(Math.abs))).toBeGreaterThan(1e-3);
    for (let i = 0; i < y1.length; i++) expect(y2[i]).toBeCloseTo(y1[i]!, 6);
  });

  it('rejects bad configs with the JSON path; a fine-grained + shared tiny LM learns', () => {
    expect(() => makeRouter({ type: 'deepseek-moe', k: 9 }, 4, 8)).toThrow(/\$\.block\.ffn\.router\.k: k = 9 exceeds/);
    expect(() => makeRouter({ type: 'deepseek-moe', k: 2, devices: 3 }, 4, 8)).toThrow(
      /\$\.block\.ffn\.router\.devices: 8 experts cannot be split into 3 equal devices/,
    );
    expect(() => makeRouter({ type: 'deepseek-moe', k: 6, devices: 4, deviceLimit: 2 }, 4, 8)).toThrow(
      /\$\.block\.ffn\.router\.deviceLimit: deviceLimit 2 leaves 4 experts, fewer than k = 6/,
    );
    const spec = tinyLM({ type: 'deepseek-moe', k: 2 }, { experts: 6, expert: { type: 'mlp', hidden: 8 }, shared: { type: 'mlp', hidden: 8, count: 1 } });
    expect(lossRatio(trainLosses(spec))).toBeLessThan(0.85);
  });
});
