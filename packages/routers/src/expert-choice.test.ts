import { buildModel, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, layerToyLosses, lossRatio, makeFFN, makeRouter, probe, registry, tinyLM } from '../test/helpers.js';
import { ExpertChoiceRouter } from './expert-choice.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const moe = (router: Record<string, unknown>) => ({ type: 'moe', experts: 4, router, expert: { type: 'mlp', hidden: 8 } });

describe('expert-choice router', () => {
  it('every expert takes exactly C = ceil(n·c/E) tokens (Σ = E·C), the top-C of its softmax column; weights in (0, 1]', () => {
    const r = new ExpertChoiceRouter(6, 4, { capacityFactor: 2, group: 'batch', softmaxAxis: 'experts', normalizeByExpertsPerToken: false }, new Rng(1));
    const x = tf.tensor2d(new Rng(2).normalArray(10 * 6), [10, 6]);
    const { plan, weight, extra } = r.route(x, forwardContext(new Rng(1), false));
    const C = Math.ceil((10 * 2) / 4);
    expect(extra!.capacity).toBe(C);
    expect(Array.from(plan.counts)).toEqual([C, C, C, C]);
    expect(plan.size).toBe(4 * C);
    const S = tf.softmax(tf.matMul(x, r.weight, false, true)).arraySync() as number[][];
    const w = weight!.dataSync();
    for (let e = 0; e < 4; e++) {
      const col = S.map((row) => row[e]!);
      const kth = [...col].sort((a, b) => b - a)[C - 1]!;
      const mine = Array.from(plan.tokenIndex).filter((_, n) => plan.expertIndex[n] === e);
      expect(new Set(mine).size).toBe(C);
      for (const t of mine) expect(col[t]).toBeGreaterThanOrEqual(kth);
    }
    for (let n = 0; n < plan.size; n++) {
      expect(w[n]).toBeGreaterThan(0);
      expect(w[n]).toBeLessThanOrEqual(1);
      expect(w[n]).toBeCloseTo(S[plan.tokenIndex[n]!]![plan.expertIndex[n]!]!, 6);
    }
    // C is clamped to the group size
    expect(r.capacity(1)).toBe(1);
  });

  it('per-sequence groups give C tokens per expert in every sequence; normalizeByExpertsPerToken divides by the token`s expert count', () => {
    const r = new ExpertChoiceRouter(6, 4, { capacityFactor: 1, group: 'sequence', softmaxAxis: 'tokens', normalizeByExpertsPerToken: true }, new Rng(3));
    const x = tf.tensor2d(new Rng(4).normalArray(16 * 6), [16, 6]);
    const { plan, weight } = r.route(x, forwardContext(new Rng(1), false), { batchShape: [2, 8] });
    const C = Math.ceil(8 / 4);
    for (let b = 0; b < 2; b++)
      for (let e = 0; e < 4; e++) {
        const n = Array.from(plan.tokenIndex).filter((t, i) => plan.expertIndex[i] === e && Math.floor(t / 8) === b).length;
        expect(n).toBe(C);
      }
    // softmax over tokens: column of a sequence sums to 1; weights = that / experts of the token
    const z = tf.matMul(x, r.weight, false, true);
    const S = tf.reshape(tf.transpose(tf.softmax(tf.transpose(tf.reshape(z, [2, 8, 4]), [0, 2, 1])), [0, 2, 1]), [16, 4]).arraySync() as number[][];
    const per = new Array(16).fill(0);
    for (const t of plan.tokenIndex) per[t]++;
    const w = weight!.dataSync();
    for (let n = 0; n < plan.size; n++) expect(w[n]).toBeCloseTo(S[plan.tokenIndex[n]!]![plan.expertIndex[n]!]! / per[plan.tokenIndex[n]!], 6);
  });

  it('a causal LM refuses it with a message naming the path; a non-causal moe layer accepts it', () => {
    expect(() => buildModel(tinyLM({ type: 'expert-choice' }), registry(), 0)).toThrow(
      /\$\.block\.ffn\.router: this router is batch-dependent and not causal \(a token's routing depends on later tokens of its sequence\)/,
    );
    expect(makeFFN<MoELayer>(moe({ type: 'expert-choice' })).router.flags).toEqual({ causalSafe: false, batchDependent: true });
    expect(() => makeRouter({ type: 'expert-choice', capacityFactor: 0 })).toThrow(/\$\.block\.ffn\.router\.capacityFactor/);
    expect(() => makeRouter({ type: 'expert-choice', group: 'window' })).toThrow(/\$\.block\.ffn\.router\.group/);
  });

  it('gradient of the layer output w.r.t. the router and experts matches finite differences (selection fixed)', () => {
    const layer = makeFFN<MoELayer>(moe({ type: 'expert-choice' }), 8);
    const x = tf.tensor3d(new Rng(5).normalArray(2 * 4 * 8), [2, 4, 8]);
    const f = () => probe(layer.forward(x, forwardContext(new Rng(1), false)));
    const errs = gradCheck(
      f,
      layer.namedParameters().map(([, v]) => v),
      5,
      1e-3,
    );
    for (const e of errs) expect(e).toBeLessThan(2e-2);
  });

  it('a moe layer with expert choice fits a toy regression (loss falls)', () => {
    expect(lossRatio(layerToyLosses(moe({ type: 'expert-choice' })))).toBeLessThan(0.85);
  });
});
