/**
 * Selection and plan building shared by the routers: top-k per row equals a full stable sort (values
 * descending, ties to the lower index, -Infinity and NaN never chosen), and the slot-major plan lists
 * every token's first choice before any second one.
 */
import { Rng } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { planFromChoices, topkRows } from './common.js';

/** The definition: sort each row's finite-or-+Infinity entries by value descending, then index. */
function topkBySort(v: Float32Array, T: number, E: number, k: number): Int32Array {
  const out = new Int32Array(T * k).fill(-1);
  for (let t = 0; t < T; t++) {
    const ids = Array.from({ length: E }, (_, e) => e).filter((e) => v[t * E + e]! > Number.NEGATIVE_INFINITY);
    ids.sort((a, b) => v[t * E + b]! - v[t * E + a]! || a - b);
    ids.slice(0, k).forEach((e, s) => {
      out[t * k + s] = e;
    });
  }
  return out;
}

describe('topkRows', () => {
  it('equals a stable full sort on random rows with ties, -Infinity and NaN', () => {
    const rng = new Rng(5);
    for (const [T, E, k] of [
      [50, 8, 2],
      [40, 64, 4],
      [30, 5, 5],
      [20, 3, 1],
      [10, 16, 0],
    ] as const) {
      // Few distinct values so that ties are common.
      const v = Float32Array.from({ length: T * E }, () => {
        const r = rng.next();
        if (r < 0.1) return Number.NEGATIVE_INFINITY;
        if (r < 0.13) return Number.NaN;
        if (r < 0.15) return Number.POSITIVE_INFINITY;
        return rng.int(6) - 3;
      });
      expect(topkRows(v, T, E, k)).toEqual(topkBySort(v, T, E, k));
    }
  });
});

describe('planFromChoices', () => {
  it('is slot-major, skips empty slots and gives flat indices t*E+e', () => {
    // token-major choices [T=3, K=2]; token 1 has no second choice.
    const { plan, flat, slot } = planFromChoices(Int32Array.from([2, 0, 1, -1, 3, 2]), 3, 2, 4);
    expect(Array.from(plan.tokenIndex)).toEqual([0, 1, 2, 0, 2]);
    expect(Array.from(plan.expertIndex)).toEqual([2, 1, 3, 0, 2]);
    expect(Array.from(slot)).toEqual([0, 0, 0, 1, 1]);
    expect(Array.from(flat)).toEqual([2, 5, 11, 0, 10]);
    expect(plan.numTokens).toBe(3);
    expect(plan.numExperts).toBe(4);
  });
});
