import { forwardContext, meanEntropy, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeFFN, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { type CumulativeRouter, cumulativeSelect } from './top-p.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const chosen = (c: Int32Array, t: number, m: number) => Array.from(c.slice(t * m, t * m + m)).filter((e) => e >= 0);

describe('top-p and threshold selection', () => {
  it('top-p keeps the minimal prefix whose mass exceeds p; one expert when max P > p; ties at exactly p keep one more', () => {
    expect(chosen(cumulativeSelect([0.4, 0.4, 0.2], 1, 3, 0.4, 3, true), 0, 3)).toEqual([0, 1]);
    expect(chosen(cumulativeSelect([0.1, 0.7, 0.2], 1, 3, 0.4, 3, true), 0, 3)).toEqual([1]);
    // XMoE rule: keep while the mass before is < t; at exactly t it stops
    expect(chosen(cumulativeSelect([0.4, 0.4, 0.2], 1, 3, 0.4, 3, false), 0, 3)).toEqual([0]);
    expect(chosen(cumulativeSelect([0.3, 0.3, 0.4], 1, 3, 0.9, 3, false), 0, 3)).toEqual([2, 0, 1]);
    // the cap
    expect(chosen(cumulativeSelect([0.25, 0.25, 0.25, 0.25], 1, 4, 0.9, 2, true), 0, 2)).toEqual([0, 1]);
    // minimality and coverage on random distributions
    const rng = new Rng(1);
    const T = 50;
    const E = 6;
    const p = new Float32Array(T * E);
    for (let t = 0; t < T; t++) {
      const row = Array.from({ length: E }, () => Math.exp(2 * rng.normal()));
      const s = row.reduce((a, b) => a + b, 0);
      row.forEach((v, e) => {
        p[t * E + e] = v / s;
      });
    }
    const c = cumulativeSelect(p, T, E, 0.5, E, true);
    for (let t = 0; t < T; t++) {
      const sel = chosen(c, t, E);
      expect(sel.length).toBeGreaterThanOrEqual(1);
      const mass = sel.reduce((a, e) => a + p[t * E + e]!, 0);
      const without = mass - p[t * E + sel.at(-1)!]!;
      expect(mass).toBeGreaterThan(0.5 - 1e-6);
      expect(without).toBeLessThanOrEqual(0.5 + 1e-6);
      // the chosen experts are the largest ones
      const rest = Array.from({ length: E }, (_, e) => e).filter((e) => !sel.includes(e));
      for (const e of rest) expect(p[t * E + e]).toBeLessThanOrEqual(Math.min(...sel.map((j) => p[t * E + j]!)));
    }
  });

  it('top-p: raw softmax weights; balance loss over all selected assignments and the per-token entropy loss', () => {
    const r = makeRouter<CumulativeRouter>({ type: 'top-p', p: 0.5 }, 6, 4);
    const x = tf.tensor2d(new Rng(2).normalArray(12 * 6), [12, 6]);
    const ctx = forwardContext(new Rng(1), true);
    const { plan, weight, probs } = r.route(x, ctx);
    const P = probs!.arraySync() as number[][];
    const w = weight!.dataSync();
    for (let n = 0; n < plan.size; n++) expect(w[n]).toBeCloseTo(P[plan.tokenIndex[n]!]![plan.expertIndex[n]!]!, 6);
    expect(ctx.aux.map((a) => [a.name, a.coef])).toEqual([
      ['switch_balance', 0.01],
      ['dynamic_entropy', 1e-4],
    ]);
    expect(ctx.aux[1]!.value.dataSync()[0]).toBeCloseTo(meanEntropy(probs!).dataSync()[0]!, 6);
    // the balance loss uses k = mean experts per token, so uniform routing would give 1
    const k = plan.size / 12;
    const Pm = [0, 1, 2, 3].map((e) => P.reduce((s, row) => s + row[e]!, 0) / 12);
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeCloseTo((4 / (k * 12)) * Array.from(plan.counts).reduce((s, c, e) => s + c * Pm[e]!, 0), 5);
  });

  it('dynamic routers report experts per token min/max in the layer statistics', () => {
    const layer = makeFFN<MoELayer>({ type: 'moe', experts: 4, router: { type: 'top-p', p: 0.6 }, expert: { type: 'mlp', hidden: 8 } }, 8);
    const ctx = forwardContext(new Rng(1), false);
    layer.forward(tf.tensor3d(new Rng(3).normalArray(2 * 16 * 8, 2), [2, 16, 8]), ctx);
    const s = ctx.routing[0]!;
    expect(s.expertsPerTokenMin).toBeGreaterThanOrEqual(1);
    expect(s.expertsPerTokenMax).toBeGreaterThan(s.expertsPerTokenMin!);
    expect(s.expertsPerToken).toBeGreaterThanOrEqual(s.expertsPerTokenMin!);
  });

  it('rejects bad configs with the JSON path', () => {
    expect(() => makeRouter({ type: 'top-p', p: 1 })).toThrow(/\$\.block\.ffn\.router\.p/);
    expect(() => makeRouter({ type: 'top-p', p: 0 })).toThrow(/\$\.block\.ffn\.router\.p/);
    expect(() => makeRouter({ type: 'top-p', maxExperts: 0 })).toThrow(/\$\.block\.ffn\.router\.maxExperts/);
    expect(() => makeRouter({ type: 'threshold', threshold: 1.5 })).toThrow(/\$\.block\.ffn\.router\.threshold/);
    expect(() => makeRouter({ type: 'top-p', entropyCoef: -1 })).toThrow(/\$\.block\.ffn\.router\.entropyCoef/);
  });

  it('top-p and threshold tiny LMs learn', () => {
    for (const router of [{ type: 'top-p' }, { type: 'threshold' }]) expect(lossRatio(trainLosses(tinyLM(router))), router.type).toBeLessThan(0.85);
  });
});
