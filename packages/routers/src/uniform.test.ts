import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import type { UniformRouter } from './uniform.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('uniform router', () => {
  it('random: k distinct experts per token, weight 1/k, balanced in expectation; round-robin: exactly balanced', () => {
    const r = makeRouter<UniformRouter>({ type: 'uniform', k: 2 }, 4, 4);
    const { plan, weight } = r.route(tf.zeros([400, 4]) as tf.Tensor2D, forwardContext(new Rng(1), true));
    for (let t = 0; t < 400; t++) expect(plan.expertIndex[t]).not.toBe(plan.expertIndex[400 + t]);
    for (const w of weight!.dataSync()) expect(w).toBeCloseTo(0.5, 7);
    for (const c of plan.counts) expect(Math.abs(c - 200)).toBeLessThan(40);
    const rr = makeRouter<UniformRouter>({ type: 'uniform', k: 1, mode: 'round-robin' }, 4, 4);
    const p = rr.route(tf.zeros([8, 4]) as tf.Tensor2D, forwardContext(new Rng(1), false));
    expect(Array.from(p.plan.expertIndex)).toEqual([0, 1, 2, 3, 0, 1, 2, 3]);
    expect(p.weight).toBeNull();
    expect(r.namedParameters()).toHaveLength(0);
  });

  it('rejects k > experts (JSON path); a uniform-routed tiny LM still learns (the experts do)', () => {
    expect(() => makeRouter({ type: 'uniform', k: 5 })).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds/);
    expect(lossRatio(trainLosses(tinyLM({ type: 'uniform', mode: 'round-robin' })))).toBeLessThan(0.85);
  });
});
