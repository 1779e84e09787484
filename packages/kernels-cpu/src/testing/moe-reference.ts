/** Plain-tfjs references, routing cases, inputs and the backend comparison shared by the fused MoE op tests (not shipped in dist). */
import * as tf from '@tensorflow/tfjs';
import type { MoeActivation } from '../index.js';
import { expect } from 'vitest';
import { maxRelDiff, randArray, rng, runOn, type Spec } from './helpers.js';

export function act(h: tf.Tensor, a: MoeActivation): tf.Tensor {
  switch (a) {
    case 'relu':
      return tf.relu(h);
    case 'gelu':
      return tf.mul(tf.mul(h, 0.5), tf.add(1, tf.erf(tf.mul(h, Math.SQRT1_2))));
    case 'silu':
      return tf.mul(h, tf.sigmoid(h));
    case 'relu2':
      return tf.square(tf.relu(h));
    default:
      return h;
  }
}

/** [N, depth] one-hot rows as float (tf.oneHot refuses depth 1). */
export function oneHot(idx: tf.Tensor, depth: number): tf.Tensor {
  return tf.cast(tf.equal(tf.reshape(idx, [-1, 1]), tf.range(0, depth, 1, 'int32')), 'float32');
}

export interface MlpCase {
  name: string;
  T: number;
  d: number;
  h: number;
  E: number;
  tok: Int32Array;
  exp: Int32Array;
}

export function topkCase(name: string, seed: number, T: number, d: number, h: number, E: number, k: number, experts?: number[]): MlpCase {
  const r = rng(seed);
  const pool = experts ?? Array.from({ length: E }, (_, i) => i);
  const tok: number[] = [];
  const exp: number[] = [];
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      tok.push(t);
      exp.push(pool[Math.floor(r() * pool.length)]);
    }
  }
  // Shuffle: assignments arrive in no particular order (non-contiguous expert loads).
  for (let i = tok.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [tok[i], tok[j]] = [tok[j], tok[i]];
    [exp[i], exp[j]] = [exp[j], exp[i]];
  }
  return { name, T, d, h, E, tok: Int32Array.from(tok), exp: Int32Array.from(exp) };
}

export const mlpCases: MlpCase[] = [
  topkCase('top-2, 5 experts, uneven loads', 1, 13, 8, 6, 5, 2),
  topkCase('experts 1 and 4 get nothing', 2, 11, 5, 7, 5, 2, [0, 2, 3]),
  topkCase('one token', 3, 1, 6, 4, 3, 2),
  { name: 'N = 0 (no assignment at all)', T: 4, d: 5, h: 3, E: 3, tok: new Int32Array(0), exp: new Int32Array(0) },
  {
    name: 'a token twice on the same expert, tokens without any expert',
    T: 6,
    d: 4,
    h: 5,
    E: 2,
    tok: Int32Array.from([3, 0, 3, 5, 0]),
    exp: Int32Array.from([1, 1, 1, 0, 1]),
  },
  topkCase('big experts split across threads (E=2, 700 tokens)', 4, 700, 24, 40, 2, 1),
  topkCase('E=16 top-4, 200 tokens', 5, 200, 32, 16, 16, 4),
];

/** The inputs of a fused expert op for `c`: x, w1, (w3 when `gated`,) w2, tokenIndex, expertIndex, weight. */
export function expertSpecs(c: MlpCase, seed: number, gated: boolean): Spec[] {
  const r = rng(seed);
  const N = c.tok.length;
  const x = { shape: [c.T, c.d], data: randArray(r, c.T * c.d) };
  const w1 = { shape: [c.E, c.d, c.h], data: randArray(r, c.E * c.d * c.h, 0.5) };
  const w3 = gated ? [{ shape: [c.E, c.d, c.h], data: randArray(r, c.E * c.d * c.h, 0.5) }] : [];
  const w2 = { shape: [c.E, c.h, c.d], data: randArray(r, c.E * c.h * c.d, 0.5) };
  return [x, w1, ...w3, w2, { shape: [N], data: c.tok }, { shape: [N], data: c.exp }, { shape: [N], data: randArray(r, N) }];
}

/** Asserts that `fast` on moelab-cpu gives the shapes of `ref` on the stock cpu backend and values within `tol`. */
export async function expectSame(
  specs: Spec[],
  fast: (...t: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
  ref: (...t: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
  tol: number,
): Promise<void> {
  const want = await runOn('cpu', specs, ref);
  const got = await runOn('moelab-cpu', specs, fast);
  expect(got.length).toBe(want.length);
  got.forEach((g, i) => {
    expect(g.shape).toEqual(want[i].shape);
    expect(maxRelDiff(g.data, want[i].data)).toBeLessThan(tol);
  });
}
