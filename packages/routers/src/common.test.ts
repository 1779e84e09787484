/**
 * Selection and plan building shared by the routers: top-k per row equals a full stable sort (values
 * descending, ties to the lower index, -Infinity and NaN never chosen), and the slot-major plan lists
 * every token's first choice before any second one. The chosen weights computed on plain arrays (no
 * gradient recorded, few assignments: a decoding step) equal the ops' values.
 */
import { Rng, tf } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { gatherAt, planFromChoices, renormPerToken, sigmoidTopKGate, softmaxTopKGate, topkRows } from './common.js';

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

/**
 * The softmax top-k gate: moelab-cpu's fused kernel on the native test pass, the tfjs ops elsewhere.
 * Either way: the plan of topkRows(scores + bias), the weights of the definition (softmax picked out
 * by a one-hot mask, renormalised per token), and the same gradient w.r.t. the scores.
 */
describe('softmaxTopKGate', () => {
  const cases: { name: string; T: number; E: number; k: number; ties?: boolean; masked?: boolean; bias?: boolean }[] = [
    { name: 'random', T: 13, E: 8, k: 2 },
    { name: 'ties', T: 20, E: 6, k: 3, ties: true },
    { name: 'k = E', T: 7, E: 4, k: 4 },
    { name: 'one token', T: 1, E: 8, k: 3 },
    { name: 'bias', T: 9, E: 8, k: 2, bias: true },
    { name: '-Infinity entries (a row with one choice)', T: 6, E: 5, k: 2, masked: true },
  ];
  for (const c of cases)
    for (const renormalize of [true, false])
      it(`${c.name}, ${renormalize ? 'renormalised' : 'raw'}: plan, weights and gradient equal the definition`, () => {
        const { T, E, k } = c;
        const rng = new Rng(T * 31 + E);
        const z = Float32Array.from({ length: T * E }, () => (c.ties ? rng.int(3) : 3 * (2 * rng.next() - 1)));
        if (c.masked) for (let e = 1; e < E; e++) z[e] = Number.NEGATIVE_INFINITY;
        const b = c.bias ? Float32Array.from({ length: E }, () => rng.next() - 0.5) : undefined;
        const sel = Float32Array.from(z, (v, i) => v + (b?.[i % E] ?? 0));
        const want = planFromChoices(topkRows(sel, T, E, k), T, k, E);
        const proj = tf.tensor1d(Float32Array.from({ length: want.plan.size }, () => rng.next()));
        const mask = new Float32Array(want.plan.size * E);
        want.flat.forEach((f, n) => {
          mask[n * E + (f % E)] = 1;
        });
        const tok = Int32Array.from(want.flat, (f) => Math.floor(f / E));
        // The definition, for the plan's assignments n: p[t_n] . onehot(e_n), divided by the token's sum.
        const reference = (s: tf.Tensor2D) => {
          const rows = tf.gather(tf.softmax(s), tf.tensor1d(tok, 'int32'));
          const w = tf.sum(tf.mul(rows, tf.tensor2d(mask, [want.plan.size, E])), 1);
          if (!renormalize) return w;
          const member = new Float32Array(want.plan.size * T);
          tok.forEach((t, n) => {
            member[n * T + t] = 1;
          });
          const sums = tf.matMul(tf.tensor2d(member, [want.plan.size, T]), tf.reshape(w, [-1, 1]), true, false);
          return tf.div(w, tf.reshape(tf.gather(sums, tf.tensor1d(tok, 'int32')), [-1]));
        };
        tf.tidy(() => {
          const scores = tf.tensor2d(z, [T, E]);
          const bias = b ? tf.tensor1d(b) : undefined;
          const got = softmaxTopKGate(scores, k, renormalize, bias);
          expect(Array.from(got.plan.tokenIndex)).toEqual(Array.from(want.plan.tokenIndex));
          expect(Array.from(got.plan.expertIndex)).toEqual(Array.from(want.plan.expertIndex));
          expect(Array.from(got.flat)).toEqual(Array.from(want.flat));
          const w = got.weight.dataSync();
          const r = reference(scores).dataSync();
          for (let n = 0; n < w.length; n++) expect(w[n]).toBeCloseTo(r[n]!, 6);
          const g = tf
            .grad((s: tf.Tensor) => tf.sum(tf.mul(softmaxTopKGate(s as tf.Tensor2D, k, renormalize, bias).weight, proj)))(scores)
            .dataSync();
          const gr = tf
            .grad((s: tf.Tensor) => tf.sum(tf.mul(reference(s as tf.Tensor2D), proj)))(scores)
            .dataSync();
          for (let i = 0; i < g.length; i++) expect(g[i]).toBeCloseTo(gr[i]!, 6);
        });
      });
});

/**
 * The sigmoid top-k gate (sigma-topk): moelab-cpu's fused kernel on the native test pass, the
 * selection on plain arrays + sigmoid(gather) elsewhere, and that generic path forced by passing
 * the scores as `select`. All three: the same plan, the same float32 weights and gradient.
 */
describe('sigmoidTopKGate', () => {
  const cases: { name: string; T: number; E: number; k: number; ties?: boolean; masked?: boolean }[] = [
    { name: 'random', T: 13, E: 8, k: 2 },
    { name: 'ties', T: 20, E: 6, k: 3, ties: true },
    { name: 'k = E', T: 7, E: 4, k: 4 },
    { name: 'one token', T: 1, E: 8, k: 3 },
    { name: '-Infinity entries (a row with one choice)', T: 6, E: 5, k: 2, masked: true },
    { name: 'no tokens', T: 0, E: 8, k: 2 },
    { name: 'T 300, E 64, k 4', T: 300, E: 64, k: 4 },
  ];
  for (const c of cases)
    it(`${c.name}: plan, weights and gradient equal the definition and the generic path`, () => {
      const { T, E, k } = c;
      const rng = new Rng(T * 37 + E);
      const z = Float32Array.from({ length: T * E }, () => (c.ties ? rng.int(3) : 3 * (2 * rng.next() - 1)));
      if (c.masked) for (let e = 1; e < E; e++) z[e] = Number.NEGATIVE_INFINITY;
      const want = planFromChoices(topkRows(z, T, E, k), T, k, E);
      const proj = tf.tensor1d(Float32Array.from({ length: want.plan.size }, () => rng.next()));
      tf.tidy(() => {
        const scores = tf.tensor2d(z, [T, E]);
        const fused = sigmoidTopKGate(scores, k);
        const generic = sigmoidTopKGate(scores, k, z);
        for (const got of [fused, generic]) {
          expect(Array.from(got.plan.tokenIndex)).toEqual(Array.from(want.plan.tokenIndex));
          expect(Array.from(got.plan.expertIndex)).toEqual(Array.from(want.plan.expertIndex));
          expect(Array.from(got.flat)).toEqual(Array.from(want.flat));
        }
        const w = Array.from(fused.weight.dataSync());
        expect(w).toEqual(Array.from(generic.weight.dataSync()));
        want.flat.forEach((f, n) => {
          expect(w[n]).toBeCloseTo(1 / (1 + Math.exp(-z[f]!)), 6);
        });
        const grad = (select?: Float32Array) =>
          Array.from(
            tf
              .grad((s: tf.Tensor) => tf.sum(tf.mul(sigmoidTopKGate(s as tf.Tensor2D, k, select).weight, proj)))(scores)
              .dataSync(),
          );
        const g = grad();
        expect(g).toEqual(grad(z));
        // Nonzero at the chosen scores only: σ'(z) times the projection.
        const p = proj.dataSync();
        const dense = new Array<number>(T * E).fill(0);
        want.flat.forEach((f, n) => {
          const s = 1 / (1 + Math.exp(-z[f]!));
          dense[f] = p[n]! * s * (1 - s);
        });
        for (let i = 0; i < g.length; i++) expect(g[i]).toBeCloseTo(dense[i]!, 6);
      });
    });
});
