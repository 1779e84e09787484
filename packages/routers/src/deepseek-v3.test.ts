import { balanceOf, forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { switchLoss } from './balance.js';
import { planFromChoices } from './common.js';
import { DeepSeekV3Router, type DeepSeekV3Options } from './deepseek-v3.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const opts: DeepSeekV3Options = {
  k: 2,
  normalize: true,
  scale: 2.5,
  groups: 1,
  topkGroup: 1,
  groupScore: 'top2-sum',
  expertBias: true,
  biasUpdateRate: 1e-2,
  seqBalanceCoef: 1e-4,
  fromBiasedSelection: false,
  zLossCoef: 0,
};

const byToken = (plan: { tokenIndex: Int32Array; expertIndex: Int32Array; numTokens: number }) => {
  const per: number[][] = Array.from({ length: plan.numTokens }, () => []);
  for (let n = 0; n < plan.tokenIndex.length; n++) per[plan.tokenIndex[n]!]!.push(plan.expertIndex[n]!);
  return per;
};

describe('deepseek-v3 router', () => {
  it('normalised sigmoid weights sum to γ per token and equal γ·s_e/Σ_selected s', () => {
    const r = new DeepSeekV3Router(6, 8, opts, new Rng(1));
    const x = tf.tensor2d(new Rng(2).normalArray(10 * 6), [10, 6]);
    const { plan, weight } = r.route(x, forwardContext(new Rng(1), false));
    const s = tf.sigmoid(tf.matMul(x, r.weight, false, true)).arraySync() as number[][];
    const w = weight!.dataSync();
    const sum = new Array(10).fill(0);
    const sel = byToken(plan);
    for (let n = 0; n < plan.size; n++) {
      const t = plan.tokenIndex[n]!;
      const e = plan.expertIndex[n]!;
      sum[t] += w[n]!;
      const den = sel[t]!.reduce((a, j) => a + s[t]![j]!, 0);
      expect(w[n]).toBeCloseTo((2.5 * s[t]![e]!) / den, 5);
    }
    for (const v of sum) expect(v).toBeCloseTo(2.5, 5);
  });

  it('bias: a constant shift changes nothing; the bias moves selection but never a kept weight; it has no gradient', () => {
    const r = new DeepSeekV3Router(6, 8, opts, new Rng(1));
    const x = tf.tensor2d(new Rng(3).normalArray(12 * 6), [12, 6]);
    const run = () => {
      const { plan, weight } = r.route(x, forwardContext(new Rng(1), false));
      return { e: Array.from(plan.expertIndex), t: Array.from(plan.tokenIndex), w: Array.from(weight!.dataSync()) };
    };
    r.bias!.bias.assign(tf.tensor1d(new Rng(4).normalArray(8, 0.1)));
    const a = run();
    r.bias!.bias.assign(tf.add(r.bias!.bias, 0.7));
    const b = run();
    expect(b.e).toEqual(a.e);
    for (let i = 0; i < a.w.length; i++) expect(b.w[i]).toBeCloseTo(a.w[i]!, 6);
    // a large bias on expert 7 makes every token pick it; the weights are still σ-based (not biased)
    const big = new Float32Array(8);
    big[7] = 10;
    r.bias!.bias.assign(tf.tensor1d(big));
    const c = run();
    const s = tf.sigmoid(tf.matMul(x, r.weight, false, true)).arraySync() as number[][];
    for (let t = 0; t < 12; t++) expect(c.e[t]).toBe(7);
    for (let n = 0; n < c.w.length; n++) {
      const t = c.t[n]!;
      const pair = c.e.filter((_, m) => c.t[m] === t);
      expect(c.w[n]).toBeCloseTo((2.5 * s[t]![c.e[n]!]!) / (s[t]![pair[0]!]! + s[t]![pair[1]!]!), 5);
    }
    expect(r.bias!.bias.trainable).toBe(false);
    expect(r.namedParameters().map(([n]) => n)).toEqual(['weight']);
  });

  it('bias controller: MaxVio on a skewed router falls below 0.3× its start after 300 updates (u = 1e-2)', () => {
    const E = 16;
    const d = 8;
    const r = new DeepSeekV3Router(d, E, { ...opts, seqBalanceCoef: 0 }, new Rng(5));
    // feature 0 is a constant 1; its weights skew the scores from σ(2) (expert 0) to σ(−2) (expert 15)
    const w = r.weight.arraySync() as number[][];
    for (let e = 0; e < E; e++) w[e]![0] = 2 - (4 * e) / (E - 1);
    r.weight.assign(tf.tensor2d(w));
    const rng = new Rng(6);
    const batch = () => {
      const v = rng.normalArray(256 * d, 0.5);
      for (let t = 0; t < 256; t++) v[t * d] = 1;
      return tf.tensor2d(v, [256, d]);
    };
    const vio = () => balanceOf(r.route(batch(), forwardContext(rng, false)).plan.counts).maxVio;
    const start = vio();
    expect(start).toBeGreaterThan(2);
    for (let i = 0; i < 300; i++) {
      tf.tidy(() => {
        r.route(batch(), forwardContext(rng, true));
      });
      r.afterStep();
    }
    const end = [0, 1, 2, 3, 4].map(vio).reduce((a, b) => a + b, 0) / 5;
    expect(end).toBeLessThan(0.3 * start);
    const st = r.bias!.stats();
    expect(st.biasMax).toBeGreaterThan(st.biasMin);
    // the favoured expert 0 ends with a much lower bias than the disfavoured expert 15 (within the sign-update dither)
    const b = r.bias!.bias.dataSync();
    expect(b[0]! - st.biasMin).toBeLessThanOrEqual(0.05);
    expect(b[15]! - b[0]!).toBeGreaterThan(0.5); // the score gap σ(2) − σ(−2) ≈ 0.76
  });

  it('group-limited selection: experts come from at most topkGroup groups; excluded groups are −∞ (not 0)', () => {
    const r = new DeepSeekV3Router(6, 8, { ...opts, groups: 4, topkGroup: 2, k: 3 }, new Rng(7));
    const x = tf.tensor2d(new Rng(8).normalArray(20 * 6), [20, 6]);
    const { plan } = r.route(x, forwardContext(new Rng(1), false));
    for (const sel of byToken(plan)) expect(new Set(sel.map((e) => Math.floor(e / 2))).size).toBeLessThanOrEqual(2);
    // a negative bias makes every kept score < 0; with 0-filling an excluded expert would win, with −∞ never
    r.bias!.bias.assign(tf.fill([8], -5));
    const kept = r.select(new Float32Array([0.9, 0.8, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3]), 1, true);
    expect(Array.from(kept).sort()).toEqual([0, 1, 6]);
  });

  it('sequence-wise loss = mean over sequences of the canonical loss on normalised sigmoid, unbiased indicator', () => {
    const r = new DeepSeekV3Router(6, 4, { ...opts, scale: 1 }, new Rng(9));
    r.bias!.bias.assign(tf.tensor1d([3, 0, 0, 0])); // the biased routing always takes expert 0
    const x = tf.tensor2d(new Rng(10).normalArray(8 * 6), [8, 6]);
    const ctx = forwardContext(new Rng(1), true);
    r.route(x, ctx, { batchShape: [2, 4] });
    const aux = ctx.aux.find((a) => a.name === 'seq_balance')!;
    expect(aux.coef).toBe(1e-4);
    const s = tf.sigmoid(tf.matMul(x, r.weight, false, true));
    const sn = tf.div(s, tf.sum(s, 1, true)).arraySync() as number[][];
    const sv = s.arraySync() as number[][];
    const per = [0, 1].map((b) => {
      const rows = [0, 1, 2, 3].map((t) => b * 4 + t);
      const choice = Int32Array.from(
        rows.flatMap((t) =>
          sv[t]!.map((v, e) => [v, e] as const)
            .sort((p, q) => q[0] - p[0])
            .slice(0, 2)
            .map(([, e]) => e),
        ),
      );
      const { plan } = planFromChoices(choice, 4, 2, 4);
      return switchLoss(tf.tensor2d(rows.map((t) => sn[t]!)), Array.from(plan.counts), 2).dataSync()[0]!;
    });
    expect(aux.value.dataSync()[0]).toBeCloseTo((per[0]! + per[1]!) / 2, 5);
  });

  it('rejects bad configs with the JSON path', () => {
    expect(() => makeRouter({ type: 'deepseek-v3', k: 9 }, 8, 8)).toThrow(/\$\.block\.ffn\.router\.k: k = 9 exceeds/);
    expect(() => makeRouter({ type: 'deepseek-v3', k: 2, groups: 3 }, 8, 8)).toThrow(/\$\.block\.ffn\.router\.groups: 8 experts cannot be split into 3/);
    expect(() => makeRouter({ type: 'deepseek-v3', k: 2, groups: 2, topkGroup: 3 }, 8, 8)).toThrow(/\$\.block\.ffn\.router\.topkGroup: topkGroup 3 exceeds/);
    expect(() => makeRouter({ type: 'deepseek-v3', k: 6, groups: 4, topkGroup: 2 }, 8, 8)).toThrow(/topkGroup: topkGroup 2 leaves 4 experts, fewer than k = 6/);
    expect(() => makeRouter({ type: 'deepseek-v3', biasUpdateRate: -1 }, 8, 8)).toThrow(/\$\.block\.ffn\.router\.biasUpdateRate/);
    expect(() => makeRouter({ type: 'topk-sigmoid-normalised', k: 1 }, 8, 8)).toThrow(/\$\.block\.ffn\.router\.k: k = 1 with normalised weights/);
  });

  it('deepseek-v3 and topk-sigmoid-normalised tiny LMs learn', () => {
    for (const router of [{ type: 'deepseek-v3', k: 2, scale: 1 }, { type: 'topk-sigmoid-normalised' }]) {
      const losses = trainLosses(tinyLM(router));
      expect(lossRatio(losses), router.type).toBeLessThan(0.85);
    }
  });
});
