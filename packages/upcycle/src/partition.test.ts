import { Rng } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import {
  balancedAssignment,
  balancedGraphPartition,
  checkPartition,
  coactivationGraph,
  edgeCut,
  importancePartition,
  randomPartition,
  sharingInnerPartition,
  sharingInterPartition,
} from './partition.js';

describe('balanced assignment', () => {
  it('exact: the least-cost assignment with exactly n/E per group, where greedy is not; greedy above the limit', () => {
    // 4 items, 2 groups of 2. Greedy takes item 0 -> group 0 (cost 0) first, then item 1 -> group 0 (1),
    // leaving items 2, 3 for group 1 at cost 10 + 10: total 21. The optimum puts 0 and 2 in group 0 and pays
    // 10 for item 3 in group 1: 0 + 1 + 2 + 10 = 13.
    const cost = Float64Array.from([0, 9, 1, 1, 2, 10, 3, 10]);
    const total = (a: Int32Array) => a.reduce((s, c, j) => s + cost[j * 2 + c]!, 0);
    const exact = balancedAssignment(cost, 4, 2);
    expect(Array.from(exact)).toEqual([0, 1, 0, 1]);
    expect(total(exact)).toBe(13);
    const greedy = balancedAssignment(cost, 4, 2, 0);
    expect(Array.from(greedy)).toEqual([0, 0, 1, 1]);
    expect(total(greedy)).toBe(21);
    // random instance: exact never costs more than greedy, and both are balanced
    const rng = new Rng(9);
    const big = Float64Array.from({ length: 48 * 4 }, () => rng.next());
    const e = balancedAssignment(big, 48, 4);
    const g = balancedAssignment(big, 48, 4, 0);
    const sum = (a: Int32Array) => a.reduce((s, c, j) => s + big[j * 4 + c]!, 0);
    expect(sum(e)).toBeLessThanOrEqual(sum(g) + 1e-12);
    for (const a of [e, g]) for (let c = 0; c < 4; c++) expect(a.filter((x) => x === c).length).toBe(12);
  });
});

describe('co-activation graph', () => {
  it('clamps each batch’s co-activation at 1, thresholds at 0.99 × the first positive decile, weights ⌊A/τ⌋', () => {
    // 4 neurons, 4 tokens, batch 2. Batch 1: Σ_t a_t a_tᵀ has 4, 6, 9 among neurons 0, 1 and 1 on neuron 2,
    // all clamped to 1. Batch 2: 0.25 among 0, 1; 0.36 on 2, 0.3 between 2 and 3, 0.25 on 3.
    const acts = Float32Array.from([2, 3, 0, 0, 0, 0, 1, 0, 0.5, 0.5, 0, 0, 0, 0, 0.6, 0.5]);
    const W = coactivationGraph(acts, 4, 4, 2);
    // A = [[1.25, 1.25, 0, 0], [1.25, 1.25, 0, 0], [0, 0, 1.36, 0.3], [0, 0, 0.3, 0.25]]: 8 zeros of 16, so the
    // deciles 10-40 are 0 and the 50th is 0.125 (halfway between 0 and 0.25); τ = 0.99 · 0.125.
    const tau = 0.99 * 0.125;
    expect(W[0 * 4 + 1]).toBe(Math.floor(1.25 / tau));
    expect(W[0 * 4 + 1]).toBe(10);
    expect(W[1 * 4 + 0]).toBe(10);
    expect(W[2 * 4 + 3]).toBe(2);
    expect(W[3 * 4 + 2]).toBe(2);
    expect(W[0]).toBe(0); // no self-loops
    expect(W[0 * 4 + 2]).toBe(0);
    expect(() => coactivationGraph(new Float32Array(8), 2, 4)).toThrow(/no two neurons are ever active together/);
  });

  it('balanced graph partition: recovers planted groups, exact sizes, lower cut than random, deterministic', () => {
    const h = 24;
    const E = 4;
    const rng = new Rng(3);
    const perm = randomPartition(h, h, 5, 'p').map((g) => g[0]!);
    const planted = (j: number) => Math.floor(perm.indexOf(j) / (h / E));
    const W = new Float64Array(h * h);
    for (let i = 0; i < h; i++)
      for (let j = i + 1; j < h; j++) {
        const w = planted(i) === planted(j) ? 3 + rng.int(3) : rng.next() < 0.15 ? 1 : 0;
        W[i * h + j] = w;
        W[j * h + i] = w;
      }
    const p = balancedGraphPartition(W, h, E);
    checkPartition(p, h);
    expect(p.every((g) => g.length === h / E)).toBe(true);
    const truth = Array.from({ length: E }, (_, e) => Array.from({ length: h }, (_, j) => j).filter((j) => planted(j) === e));
    expect(p.map((g) => planted(g[0]!)).sort()).toEqual([0, 1, 2, 3]);
    for (const g of p) expect(g).toEqual(truth[planted(g[0]!)]);
    expect(edgeCut(W, p)).toBeLessThan(edgeCut(W, randomPartition(h, E, 0, 'r')));
    expect(balancedGraphPartition(W, h, E)).toEqual(p);
  });
});

describe('LLaMA-MoE importance splits', () => {
  // Importance of 8 neurons on 2 data clusters.
  const scores = [Float64Array.from([9, 8, 7, 1, 2, 3, 0, 5]), Float64Array.from([9, 1, 2, 8, 7, 6, 4, 0])];

  it('importance: the best free (expert, neuron) pair first, every neuron once', () => {
    // ties go to the later expert: e1 takes 0 (9 vs 9) and 3 (8 vs 8), e0 takes 1 (8), e1 4 (7 vs 7), e0 2 (7),
    // e1 5 (6) and is full; e0 gets the rest.
    const p = importancePartition(scores, 4);
    checkPartition(p, 8);
    expect(p).toEqual([
      [1, 2, 6, 7],
      [0, 3, 4, 5],
    ]);
    expect(() => importancePartition(scores, 3)).toThrow(/2 experts of 3 neurons do not cover the 8 neurons/);
  });

  it('sharing-inner: each expert its top neurons; a neuron can be in both or in none', () => {
    const p = sharingInnerPartition(scores, 3);
    expect(p).toEqual([
      [0, 1, 2],
      [0, 3, 4],
    ]);
  });

  it('sharing-inter: the neurons most experts pick form the residual, the rest is split without sharing', () => {
    const { residual, experts } = sharingInterPartition(scores, 3, 2);
    // top-3 lists: e0 {0,1,2}, e1 {0,3,4}: neuron 0 is picked twice -> residual; next round e0 {1,2,7}, e1 {3,4,5}:
    // all once -> the lowest index of them, 1, fills the residual.
    expect(residual).toEqual([0, 1]);
    expect([...residual, ...experts.flat()].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(experts).toEqual([
      [2, 6, 7],
      [3, 4, 5],
    ]);
  });
});
