/**
 * The gated MoE op: the generic tfjs-ops path equals a per-assignment loop in plain JS, and where the
 * backend has the fused `MoelabMoeGLU` kernel (the moelab-cpu test pass) the kernel equals the
 * generic path in values and in the gradients of x, W1, W3, W2 and the routing weights.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { DispatchPlan } from '../nn/dispatch.js';
import { Rng } from '../rng.js';
import { tf } from '../tf.js';
import { hasKernel } from './kernel.js';
import { MOE_GLU_KERNEL } from '../kernels/contract.js';
import { moeGLU, moeGLUGeneric } from './moe-glu.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const gate = { silu: (v: number) => v / (1 + Math.exp(-v)), relu: (v: number) => Math.max(0, v) } as const;

interface Case {
  name: string;
  T: number;
  d: number;
  h: number;
  E: number;
  tok: number[];
  exp: number[];
}

function randomCase(name: string, seed: number, T: number, d: number, h: number, E: number, k: number): Case {
  const rng = new Rng(seed);
  const tok: number[] = [];
  const exp: number[] = [];
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      tok.push(t);
      exp.push(rng.int(E - 1)); // the last expert never gets a token
    }
  return { name, T, d, h, E, tok, exp };
}

const cases: Case[] = [
  randomCase('top-2 over 6 experts, one empty', 1, 9, 6, 5, 6, 2),
  randomCase('one token', 2, 1, 4, 3, 3, 2),
  { name: 'no assignment at all', T: 3, d: 4, h: 2, E: 2, tok: [], exp: [] },
  randomCase('E=16 top-4, 40 tokens', 3, 40, 16, 8, 16, 4),
];

function tensors(c: Case, seed: number) {
  const rng = new Rng(seed);
  const N = c.tok.length;
  return {
    x: tf.tensor2d(rng.normalArray(c.T * c.d), [c.T, c.d]),
    w1: tf.tensor3d(rng.normalArray(c.E * c.d * c.h, 0.5), [c.E, c.d, c.h]),
    w3: tf.tensor3d(rng.normalArray(c.E * c.d * c.h, 0.5), [c.E, c.d, c.h]),
    w2: tf.tensor3d(rng.normalArray(c.E * c.h * c.d, 0.5), [c.E, c.h, c.d]),
    weight: tf.tensor1d(rng.normalArray(N)),
    proj: tf.tensor2d(rng.normalArray(c.T * c.d), [c.T, c.d]),
    plan: new DispatchPlan(Int32Array.from(c.tok), Int32Array.from(c.exp), c.T, c.E),
  };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(b[i]!)));
  return a.length === b.length ? m : Number.POSITIVE_INFINITY;
}

describe('moeGLU (generic path)', () => {
  for (const c of cases)
    for (const act of ['silu', 'relu'] as const)
      it(`${act}: ${c.name} equals a per-assignment loop`, () => {
        const { x, w1, w3, w2, weight, plan } = tensors(c, 10 + c.T);
        const got = tf.tidy(() => moeGLUGeneric(x, w1, w3, w2, plan, weight, act).dataSync());
        const [X, W1, W3, W2, Wt] = [x, w1, w3, w2, weight].map((t) => t.dataSync());
        const want = new Float32Array(c.T * c.d);
        c.tok.forEach((t, n) => {
          const e = c.exp[n]!;
          for (let j = 0; j < c.h; j++) {
            let a = 0;
            let b = 0;
            for (let i = 0; i < c.d; i++) {
              a += X![t * c.d + i]! * W1![(e * c.d + i) * c.h + j]!;
              b += X![t * c.d + i]! * W3![(e * c.d + i) * c.h + j]!;
            }
            const u = gate[act](a) * b * Wt![n]!;
            for (let o = 0; o < c.d; o++) want[t * c.d + o]! += u * W2![(e * c.h + j) * c.d + o]!;
          }
        });
        expect(got.length).toBe(c.T * c.d);
        expect(maxDiff(got, want)).toBeLessThan(1e-5);
      });
});

describe.skipIf(!hasKernel(MOE_GLU_KERNEL))(`moeGLU on the ${MOE_GLU_KERNEL} kernel equals the generic path`, () => {
  for (const c of cases)
    for (const act of ['silu', 'gelu', 'relu'] as const)
      it(`${act}: ${c.name} (values and gradients)`, () => {
        const { x, w1, w3, w2, weight, proj, plan } = tensors(c, 20 + c.T);
        const run = (f: typeof moeGLU) =>
          tf.tidy(() => {
            // The zero term keeps every input on the tape when the plan is empty (the generic path
            // then never touches the weights).
            const loss = (a: tf.Tensor, b: tf.Tensor, c3: tf.Tensor, d2: tf.Tensor, w: tf.Tensor) =>
              tf.add(
                tf.sum(tf.mul(f(a as tf.Tensor2D, b as tf.Tensor3D, c3 as tf.Tensor3D, d2 as tf.Tensor3D, plan, w as tf.Tensor1D, act), proj)),
                tf.mul(tf.addN([tf.sum(b), tf.sum(c3), tf.sum(d2), tf.sum(w)]), 0),
              );
            const out = f(x, w1, w3, w2, plan, weight, act).dataSync();
            return [
              out,
              ...tf
                .grads(loss)([x, w1, w3, w2, weight])
                .map((g) => g.dataSync()),
            ];
          });
        const fused = run(moeGLU);
        const generic = run(moeGLUGeneric);
        for (const [i, v] of fused.entries()) expect(maxDiff(v, generic[i]!)).toBeLessThan(5e-5);
      });
});
