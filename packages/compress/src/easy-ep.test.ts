/**
 * EASY-EP's score (prune method `easy-ep`) on a tiny two-layer LM: the token weight 1 − cos(h, h + r)
 * lies in [0, 2] and is 0 when the experts add nothing or push along h; the observer's sums equal a
 * direct computation from the residual stream and the layer output (hash routing: one expert per
 * token with gate 1, so r_t is the layer output); scores add up over demonstrations, so the pruning
 * decision does not depend on their order; mixed-domain calibration sums the per-domain scores
 * normalised to 1, so one domain gives its own plan, a domain's token count does not weigh, and the
 * order of the domains does not matter.
 */
import { buildModel, forwardContext, type NodeSpec, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../test/registry.js';
import { easyTokenWeight, RoutingObserver } from './observer.js';
import { expertScores, mixedDomainScores, planPruning } from './prune.js';
import { type Model, moeLayers, type SpecModel } from './surgery.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const E = 6;

function source(router: Record<string, unknown>): SpecModel {
  const spec: NodeSpec = {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: 16,
    contextLength: 8,
    stack: { groupSize: 2, repeats: 1 },
    block: { type: 'transformer', attention: { type: 'mha', heads: 2 }, ffn: { type: 'moe', experts: E, router, expert: { type: 'glu', hidden: 12 } } },
  };
  return { spec, model: buildModel<Model>(spec, registry, 9) };
}

const batch = (offset: number) =>
  tf.tensor2d(
    Int32Array.from({ length: 2 * 8 }, (_, i) => (offset + i * 5) % 32),
    [2, 8],
    'int32',
  );

describe('EASY-EP', () => {
  it('token weight: in [0, 2]; 0 for r = 0 and r = c·h (c > 0); 2 for h + r = −h; 1 for r ⟂ h of the same length', () => {
    const h = [1, -2, 0.5];
    expect(easyTokenWeight(h, [0, 0, 0])).toBe(0);
    expect(easyTokenWeight(h, [3, -6, 1.5])).toBeCloseTo(0, 12);
    expect(easyTokenWeight(h, [-2, 4, -1])).toBeCloseTo(2, 12);
    expect(easyTokenWeight([1, 0], [-1, 1])).toBeCloseTo(1, 12);
    const rng = new Rng(4);
    for (let i = 0; i < 200; i++) {
      const w = easyTokenWeight(
        Array.from({ length: 5 }, () => rng.normal()),
        Array.from({ length: 5 }, () => 3 * rng.normal()),
      );
      expect(w).toBeGreaterThanOrEqual(0);
      expect(w).toBeLessThanOrEqual(2);
    }
  });

  it("the observer's sums equal Σ_t g ‖f_e(x_t)‖ (1 − cos(h_t, h_t + r_t)) computed from the residual stream and the layer output", () => {
    const src = source({ type: 'hash' });
    const path = 'transformer.layers.1.ffn';
    const ids = batch(3);
    let h: number[][] = [];
    let x: tf.Tensor2D | undefined;
    const ctx = forwardContext(new Rng(0), false, {
      assignments: new Map(),
      ffnResidualObserver: (layer, res) => {
        if (layer === path) h = (tf.reshape(res, [-1, 16]) as tf.Tensor2D).arraySync();
      },
      moeObserver: (ev) => {
        if (ev.layer === path) x = tf.keep(ev.x.clone());
      },
    });
    tf.tidy(() => {
      src.model.forward(ids, ctx);
    });
    const call = ctx.assignments!.get(path)![0]!;
    const layer = moeLayers(src.model)[1]!.layer;
    const tokenIds = Int32Array.from(ids.dataSync());
    const y = tf.tidy(() => layer.forward(x!, forwardContext(new Rng(0), false, { tokenIds })).arraySync() as number[][]);
    const want = new Float64Array(E);
    call.expertIndex.forEach((e, n) => {
      const t = call.tokenIndex[n]!;
      want[e]! += Math.hypot(...y[t]!) * easyTokenWeight(h[t]!, y[t]!);
    });
    const obs = new RoutingObserver();
    obs.observe(src.model, ids);
    const s = obs.layer(path);
    expect(s.easyTokens).toBe(16);
    for (let e = 0; e < E; e++) expect(s.easySum[e]).toBeCloseTo(want[e]!, 4);
    x?.dispose();
  });

  it('scores add up over demonstrations: the order of the demonstrations does not change the pruning plan', () => {
    const src = source({ type: 'softmax-topk', k: 2 });
    const a = new RoutingObserver();
    const b = new RoutingObserver();
    for (const o of [0, 7, 13]) a.observe(src.model, batch(o));
    for (const o of [13, 0, 7]) b.observe(src.model, batch(o));
    const one = new RoutingObserver();
    one.observe(src.model, tf.concat([batch(0), batch(7), batch(13)], 0) as tf.Tensor2D);
    for (const l of moeLayers(src.model)) {
      const sa = a.layer(l.path).easySum;
      for (let e = 0; e < E; e++) {
        expect(b.layer(l.path).easySum[e]).toBeCloseTo(sa[e]!, 4);
        expect(one.layer(l.path).easySum[e]).toBeCloseTo(sa[e]!, 4);
      }
    }
    const plan = planPruning(a, src, { method: 'easy-ep', ratio: 0.5 });
    expect(planPruning(b, src, { method: 'easy-ep', ratio: 0.5 }).keep).toEqual(plan.keep);
    for (const [path, keep] of plan.keep) {
      const score = a.layer(path).easySum;
      const minKept = Math.min(...keep.map((e) => score[e]!));
      for (let e = 0; e < E; e++) if (!keep.includes(e)) expect(score[e]!).toBeLessThanOrEqual(minKept);
    }
  });

  it('a layer whose residual stream was never seen is a one-line error', () => {
    const src = source({ type: 'softmax-topk', k: 2 });
    const obs = new RoutingObserver();
    const { observed, ffnResidualObserver: _, ...hooks } = obs.hooks();
    const ctx = forwardContext(new Rng(0), false, hooks);
    tf.tidy(() => {
      src.model.forward(batch(0), ctx);
    });
    obs.finish(ctx, {}, observed);
    expect(() => planPruning(obs, src, { method: 'easy-ep', ratio: 0.5 })).toThrow(
      /transformer\.layers\.0\.ffn: the easy-ep score needs the residual stream around the layer/,
    );
  });

  it('mixed-domain calibration: Σ_d s_d / Σ s_d; one domain = its own plan; token count and domain order do not weigh', () => {
    const src = source({ type: 'softmax-topk', k: 2 });
    const a = new RoutingObserver();
    a.observe(src.model, batch(0));
    const a3 = new RoutingObserver();
    for (let i = 0; i < 3; i++) a3.observe(src.model, batch(0));
    const b = new RoutingObserver();
    b.observe(src.model, batch(11));
    for (const l of moeLayers(src.model)) {
      const sa = expertScores(a.layer(l.path), 'easy-ep');
      const sb = expertScores(b.layer(l.path), 'easy-ep');
      const ta = sa.reduce((x, y) => x + y, 0);
      const tb = sb.reduce((x, y) => x + y, 0);
      const mixed = mixedDomainScores([a, b], l.path, 'easy-ep');
      for (let e = 0; e < E; e++) expect(mixed[e]).toBeCloseTo(sa[e]! / ta + sb[e]! / tb, 12);
      expect(mixed.reduce((x, y) => x + y, 0)).toBeCloseTo(2, 12);
      const thrice = mixedDomainScores([a3, b], l.path, 'easy-ep');
      for (let e = 0; e < E; e++) expect(thrice[e]).toBeCloseTo(mixed[e]!, 9);
    }
    for (const method of ['easy-ep', 'reap', 'frequency'] as const) {
      expect(planPruning([a], src, { method, ratio: 0.5 }).keep).toEqual(planPruning(a, src, { method, ratio: 0.5 }).keep);
      const ab = planPruning([a, b], src, { method, ratio: 0.5 });
      expect(planPruning([b, a], src, { method, ratio: 0.5 }).keep).toEqual(ab.keep);
      expect(planPruning([a3, b], src, { method, ratio: 0.5 }).keep).toEqual(ab.keep);
    }
  });

  it('mixed-domain calibration: a domain that saw no tokens, or none at all, is a one-line error', () => {
    const src = source({ type: 'softmax-topk', k: 2 });
    const a = new RoutingObserver();
    a.observe(src.model, batch(0));
    expect(() => planPruning([], src, { method: 'easy-ep', ratio: 0.5 })).toThrow(/at least one calibration domain/);
    expect(() => planPruning([a, new RoutingObserver()], src, { method: 'easy-ep', ratio: 0.5 })).toThrow(
      /no routing statistics for layer "transformer\.layers\.0\.ffn"/,
    );
  });
});
