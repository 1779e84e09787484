import { Rng } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { contiguousPartition } from './partition.js';
import { fitSelectionRouter, groupMass } from './router-fit.js';

describe('MoEfication router fit', () => {
  // A ReLU FFN of 16 neurons in 4 groups on d = 8; 400 random inputs; activation mass per group.
  const rng = new Rng(11);
  const [d, h, E, N] = [8, 16, 4, 400];
  const w1 = Float64Array.from({ length: h * d }, () => rng.normal());
  const rows = Array.from({ length: N }, () => Float32Array.from({ length: d }, () => rng.normal()));
  const acts = new Float32Array(N * h);
  rows.forEach((x, t) => {
    for (let j = 0; j < h; j++)
      acts[t * h + j] = Math.max(
        0,
        x.reduce((s, v, a) => s + v * w1[j * d + a]!, 0),
      );
  });
  const groups = contiguousPartition(h, E);
  const S = groupMass(acts, N, h, groups);
  const identity = Float64Array.from({ length: E * E }, (_, i) => (i % (E + 1) === 0 ? 1 : 0));
  const opts = { epochs: 30, lr: 0.01, batch: 64, k: 1, seed: 0, label: 'test' };

  it('group mass is the sum of |a| over each group’s neurons', () => {
    expect(S[5 * E + 2]).toBeCloseTo(
      acts.subarray(5 * h + 8, 5 * h + 12).reduce((s, v) => s + v, 0),
      5,
    );
  });

  it('from a blank W_a the fit learns to pick the group of largest mass; BCE falls; deterministic', () => {
    const fit = fitSelectionRouter(rows, S, new Float64Array(E * d), identity, opts);
    // the oracle's coverage (top-1 by true mass) on the held-out 10%
    let oracle = 0;
    for (let t = 360; t < N; t++) {
      const s = Array.from(S.subarray(t * E, (t + 1) * E));
      oracle += Math.max(...s) / s.reduce((a, b) => a + b, 0) / 40;
    }
    expect(fit.coverageBefore).toBeLessThan(0.3); // a tie everywhere: always group 0
    expect(fit.coverageAfter).toBeGreaterThan(fit.coverageBefore + 0.1);
    expect(fit.coverageAfter).toBeGreaterThan(0.9 * oracle); // 0.403 of the oracle's 0.431
    expect(fit.lossKept).toBeLessThan(fit.lossFirst);
    const again = fitSelectionRouter(rows, S, new Float64Array(E * d), identity, opts);
    expect(Array.from(again.wa)).toEqual(Array.from(fit.wa));
    const none = fitSelectionRouter(rows, S, new Float64Array(E * d), identity, { ...opts, epochs: 0 });
    expect(Array.from(none.wa)).toEqual(new Array(E * d).fill(0));
  });
});
