import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { GShardTop2Router, type GShardOptions } from './gshard-top2.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const opts: GShardOptions = { policyTrain: 'all', policyEval: 'all', threshold: 0.2, jitterEps: 0, balanceCoef: 0.01, zLossCoef: 0 };

function route(o: Partial<GShardOptions>, T = 40, training = false, seed = 1) {
  const r = new GShardTop2Router(6, 5, { ...opts, ...o }, new Rng(3));
  const x = tf.tensor2d(new Rng(4).normalArray(T * 6, 2), [T, 6]);
  const ctx = forwardContext(new Rng(seed), training);
  const res = r.route(x, ctx);
  const p = tf.softmax(tf.matMul(x, r.weight, false, true)).arraySync() as number[][];
  return { ...res, ctx, p, T };
}

describe('gshard-top2 and st-moe routers', () => {
  it('policy all: two experts per token, the top-2 of p, gates g1 ≥ g2 with g1 + g2 = 1', () => {
    const { plan, weight, p, T } = route({});
    expect(plan.size).toBe(2 * T);
    const w = weight!.dataSync();
    for (let t = 0; t < T; t++) {
      const e1 = plan.expertIndex[t]!;
      const e2 = plan.expertIndex[T + t]!;
      const order = p[t]!.map((v, e) => [v, e] as const).sort((a, b) => b[0] - a[0]);
      expect([e1, e2]).toEqual([order[0]![1], order[1]![1]]);
      expect(w[t]).toBeGreaterThanOrEqual(w[T + t]!);
      expect(w[t]! + w[T + t]!).toBeCloseTo(1, 6);
      expect(w[t]).toBeCloseTo(p[t]![e1]! / (p[t]![e1]! + p[t]![e2]!), 6);
    }
  });

  it('policy none keeps g1 = p1/(p1+p2) (no renormalisation after the drop); threshold keeps e2 iff g2 > θ', () => {
    const none = route({ policyEval: 'none' });
    expect(none.plan.size).toBe(none.T);
    const all = route({});
    const wn = none.weight!.dataSync();
    const wa = all.weight!.dataSync();
    for (let t = 0; t < none.T; t++) expect(wn[t]).toBeCloseTo(wa[t]!, 6);
    const th = route({ policyEval: 'threshold', threshold: 0.3 });
    const kept = new Set(Array.from(th.plan.tokenIndex.slice(th.T)));
    for (let t = 0; t < th.T; t++) expect(kept.has(t)).toBe(wa[all.T + t]! > 0.3);
  });

  it('random policy keeps e2 with frequency ≈ min(1, g2/θ); sampling (DeepSpeed) always keeps a second expert ≠ e1', () => {
    const all = route({});
    const wa = all.weight!.dataSync();
    let expected = 0;
    for (let t = 0; t < all.T; t++) expected += Math.min(1, wa[all.T + t]! / 0.2);
    let kept = 0;
    const draws = 60;
    for (let s = 0; s < draws; s++) kept += route({ policyTrain: 'random' }, 40, true, 100 + s).plan.size - 40;
    expect(kept / draws).toBeGreaterThan(expected - 2);
    expect(kept / draws).toBeLessThan(expected + 2);
    const smp = route({ policyTrain: 'sampling' }, 40, true);
    expect(smp.plan.size).toBe(80);
    for (let t = 0; t < 40; t++) expect(smp.plan.expertIndex[40 + t]).not.toBe(smp.plan.expertIndex[t]);
  });

  it('balance loss counts first choices only (E·Σ f1·P, 1 = uniform); st-moe adds the z-loss 1e-3', () => {
    const { ctx, plan, p, T } = route({}, 40, true);
    const f = new Array(5).fill(0);
    for (let t = 0; t < T; t++) f[plan.expertIndex[t]!] += 1 / T;
    const P = [0, 1, 2, 3, 4].map((e) => p.reduce((s, row) => s + row[e]!, 0) / T);
    expect(ctx.aux[0]!.name).toBe('switch_balance');
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeCloseTo(5 * f.reduce((s, v, e) => s + v * P[e]!, 0), 5);
    const st = makeRouter<GShardTop2Router>({ type: 'st-moe' }, 6, 4);
    const c2 = forwardContext(new Rng(1), true);
    st.route(tf.tensor2d(new Rng(5).normalArray(8 * 6), [8, 6]), c2);
    expect(c2.aux.map((a) => [a.name, a.coef])).toEqual([
      ['switch_balance', 0.01],
      ['z_loss', 0.001],
    ]);
  });

  it('rejects one expert and bad options with the JSON path; gshard-top2 and st-moe tiny LMs learn', () => {
    expect(() => makeRouter({ type: 'gshard-top2' }, 4, 1)).toThrow(/top-2 routing needs at least 2 experts/);
    expect(() => makeRouter({ type: 'gshard-top2', policyTrain: 'sometimes' })).toThrow(/\$\.block\.ffn\.router\.policyTrain/);
    expect(() => makeRouter({ type: 'gshard-top2', threshold: 0 })).toThrow(/\$\.block\.ffn\.router\.threshold/);
    for (const router of [{ type: 'gshard-top2' }, { type: 'st-moe' }]) expect(lossRatio(trainLosses(tinyLM(router))), router.type).toBeLessThan(0.85);
  });
});
