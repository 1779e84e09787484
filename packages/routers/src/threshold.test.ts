import { forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeFFN, makeRouter } from '../test/helpers.js';
import type { CumulativeRouter } from './top-p.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('threshold router (XMoE)', () => {
  it('keeps experts while the mass ranked before them is < t (at least one), raw weights, first-choice balance loss', () => {
    const r = makeRouter<CumulativeRouter>({ type: 'threshold', threshold: 0.6 }, 6, 4);
    const x = tf.tensor2d(new Rng(1).normalArray(30 * 6, 2), [30, 6]);
    const ctx = forwardContext(new Rng(1), true);
    const { plan, weight, probs } = r.route(x, ctx);
    const P = probs!.arraySync() as number[][];
    const per: number[][] = Array.from({ length: 30 }, () => []);
    const w = weight!.dataSync();
    for (let n = 0; n < plan.size; n++) {
      per[plan.tokenIndex[n]!]!.push(plan.expertIndex[n]!);
      expect(w[n]).toBeCloseTo(P[plan.tokenIndex[n]!]![plan.expertIndex[n]!]!, 6);
    }
    per.forEach((sel, t) => {
      const sorted = P[t]!.map((p, e) => [p, e] as const).sort((a, b) => b[0] - a[0]);
      let before = 0;
      const want: number[] = [];
      for (const [p, e] of sorted) {
        if (want.length > 0 && before >= 0.6) break;
        want.push(e);
        before += p;
      }
      expect(sel).toEqual(want);
    });
    // first-choice Switch loss: E · Σ f1 P
    const f = [0, 0, 0, 0];
    for (let t = 0; t < 30; t++) f[per[t]![0]!]! += 1 / 30;
    const Pm = [0, 1, 2, 3].map((e) => P.reduce((s, row) => s + row[e]!, 0) / 30);
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeCloseTo(4 * f.reduce((s, v, e) => s + v * Pm[e]!, 0), 5);
  });

  it("XMoE's capacity setting (cf 8, min 4) on the moe layer drops nothing at this size; experts per token vary", () => {
    const layer = makeFFN<MoELayer>(
      { type: 'moe', experts: 4, router: { type: 'threshold' }, expert: { type: 'mlp', hidden: 8 }, capacityFactor: 8, minCapacity: 4 },
      8,
    );
    const ctx = forwardContext(new Rng(1), true);
    layer.forward(tf.tensor3d(new Rng(2).normalArray(2 * 16 * 8, 2), [2, 16, 8]), ctx);
    const s = ctx.routing[0]!;
    expect(s.dropRate).toBe(0);
    expect(s.expertsPerTokenMin).toBeGreaterThanOrEqual(1);
    expect(s.expertsPerTokenMax).toBeGreaterThan(s.expertsPerTokenMin!);
  });
});
