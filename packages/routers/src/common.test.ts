/**
 * Selection and plan building shared by the routers: top-k per row equals a full stable sort (values
 * descending, ties to the lower index, -Infinity and NaN never chosen), and the slot-major plan lists
 * every token's first choice before any second one. The chosen weights computed on plain arrays (no
 * gradient recorded, few assignments: a decoding step) equal the ops' values.
 */
import { Rng, tf } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { gatherAt, planFromChoices, renormPerToken, topkRows } from './common.js';

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

describe('gatherAt and renormPerToken', () => {
  /** Chosen weights of random softmax rows, [gathered, renormalised]; under a gradient tape the ops run. */
  function weights(T: number, E: number, k: number, tape: boolean): [Float32Array, Float32Array] {
    const rng = new Rng(9);
    const probs = tf.softmax(tf.tensor2d(rng.normalArray(T * E, 2), [T, E])) as tf.Tensor2D;
    const { plan, flat } = planFromChoices(topkRows(probs.dataSync(), T, E, k), T, k, E);
    let out: [Float32Array, Float32Array] = [new Float32Array(), new Float32Array()];
    const run = (p: tf.Tensor2D) => {
      const g = gatherAt(p, flat);
      const r = renormPerToken(g, plan);
      out = [Float32Array.from(g.dataSync()), Float32Array.from(r.dataSync())];
      return tf.sum(r);
    };
    // probs + 0 under the tape: the same values, recorded for the gradient.
    if (tape) tf.tidy(() => void tf.grad((x) => run(tf.add(probs, x) as tf.Tensor2D))(tf.scalar(0)));
    else tf.tidy(() => void run(probs));
    probs.dispose();
    return out;
  }

  it('on plain arrays (no tape, a few assignments) equal the ops: bit for bit with two per token', () => {
    expect(tf.engine().isTapeOn()).toBe(false);
    const [g, r] = weights(3, 8, 2, false);
    const [gOps, rOps] = weights(3, 8, 2, true);
    expect(g).toEqual(gOps);
    expect(r).toEqual(rOps);
    for (let t = 0; t < 3; t++) expect(r[t]! + r[3 + t]!).toBeCloseTo(1, 6);
  });

  it('and within float32 rounding with four per token; larger calls keep the ops', () => {
    const [g, r] = weights(4, 16, 4, false);
    const [gOps, rOps] = weights(4, 16, 4, true);
    expect(g).toEqual(gOps);
    for (let n = 0; n < r.length; n++) expect(Math.abs(r[n]! - rOps[n]!)).toBeLessThanOrEqual(2 ** -23 * rOps[n]!);
    const [gBig, rBig] = weights(40, 8, 2, false);
    const [gBigOps, rBigOps] = weights(40, 8, 2, true);
    expect(gBig).toEqual(gBigOps);
    expect(rBig).toEqual(rBigOps);
  });
});
