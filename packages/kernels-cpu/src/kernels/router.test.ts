import * as tf from '@tensorflow/tfjs';
import { SIGMOID_TOPK_GRAD_KERNEL, SIGMOID_TOPK_KERNEL, SOFTMAX_TOPK_GRAD_KERNEL, SOFTMAX_TOPK_KERNEL } from '@moelab/core/kernels';
import { afterAll, describe, expect, it } from 'vitest';
import { randArray, rng, type Spec, status } from '../testing/helpers.js';
import { expectSame } from '../testing/moe-reference.js';

afterAll(async () => {
  await tf.setBackend('cpu');
});

/** The fused gate on the backend under test: [weight [k,T], expert [k,T]]. */
function gate(scores: tf.Tensor, bias: tf.Tensor, k: number, renormalize: boolean): tf.Tensor[] {
  return tf.engine().runKernel(SOFTMAX_TOPK_KERNEL, { scores, bias }, { k, renormalize } as unknown as tf.NamedAttrMap) as tf.Tensor[];
}

/** Slot-major choices [k*T] of each row's k largest (ties: lower index; -Infinity and NaN never chosen; -1 = none). */
function choose(z: Float32Array, b: Float32Array, T: number, E: number, k: number): Int32Array {
  const out = new Int32Array(k * T).fill(-1);
  for (let t = 0; t < T; t++) {
    const ids = [...Array(E).keys()].filter((e) => z[t * E + e]! + (b[e] ?? 0) > Number.NEGATIVE_INFINITY);
    ids.sort((i, j) => z[t * E + j]! + (b[j] ?? 0) - (z[t * E + i]! + (b[i] ?? 0)) || i - j);
    ids.slice(0, k).forEach((e, s) => {
      out[s * T + t] = e;
    });
  }
  return out;
}

/**
 * The gate in plain tfjs ops for fixed choices: weight [k,T] = the softmax picked out by a one-hot
 * mask, divided by its per-token sum when renormalised (a mask, not a gather: the stock cpu
 * backend's gather gradient is quadratic).
 */
function refWeight(scores: tf.Tensor, choices: Int32Array, T: number, E: number, k: number, renormalize: boolean): tf.Tensor {
  const mask = new Float32Array(k * T * E);
  choices.forEach((e, i) => {
    if (e >= 0) mask[i * E + e] = 1;
  });
  const w = tf.sum(tf.mul(tf.tensor3d(mask, [k, T, E]), tf.softmax(scores)), -1);
  return renormalize ? tf.div(w, tf.sum(w, 0, true)) : w;
}

interface GateCase {
  name: string;
  T: number;
  E: number;
  k: number;
  scores: Float32Array;
  bias?: Float32Array;
}

function randomCase(name: string, seed: number, T: number, E: number, k: number, withBias = false): GateCase {
  const r = rng(seed);
  return { name, T, E, k, scores: randArray(r, T * E, 3), bias: withBias ? randArray(r, E, 0.5) : undefined };
}

// Ties: values on a coarse grid, so most rows hold equal scores (the lower index must win).
const ties = randomCase('ties', 5, 40, 6, 3);
ties.scores = ties.scores.map((v) => Math.round(v));
// Masked experts: -Infinity scores; row 0 keeps one finite score, so it makes one choice of k = 2.
const masked = randomCase('-Infinity entries, a row with fewer than k choices', 6, 9, 5, 2);
for (let e = 1; e < 5; e++) masked.scores[e] = Number.NEGATIVE_INFINITY;
masked.scores[5 * 3 + 2] = Number.NEGATIVE_INFINITY;

const cases: GateCase[] = [
  randomCase('T 37, E 8, k 2', 1, 37, 8, 2),
  randomCase('one token', 2, 1, 8, 3),
  randomCase('k = E', 3, 11, 4, 4),
  randomCase('bias shifts the selection', 4, 23, 16, 4, true),
  ties,
  masked,
  randomCase('T 1024, E 64, k 4 (thread pool)', 7, 1024, 64, 4),
];

describe.skipIf(!status.available)(`fused softmax top-k gate equals the plain-tfjs reference (${status.reason})`, () => {
  for (const c of cases) {
    for (const renormalize of [true, false]) {
      it(`${c.name}, ${renormalize ? 'renormalised' : 'raw'}: choices, weights and the gradient of the scores`, async () => {
        const { T, E, k } = c;
        const bias = c.bias ?? new Float32Array(0);
        const choices = choose(c.scores, bias, T, E, k);
        const proj = randArray(rng(99), k * T);
        const specs: Spec[] = [
          { shape: [T, E], data: c.scores },
          { shape: [bias.length], data: bias },
        ];
        const lossOf = (w: tf.Tensor) => tf.sum(tf.mul(w, tf.tensor(proj, [k, T])));
        await tf.setBackend('moelab-cpu');
        const got = tf.tidy(() => gate(tf.tensor2d(c.scores, [T, E]), tf.tensor1d(bias), k, renormalize)[1]!.dataSync());
        expect(Array.from(got)).toEqual(Array.from(choices));
        await expectSame(
          specs,
          (s, b) => gate(s!, b!, k, renormalize)[0]!,
          (s) => refWeight(s!, choices, T, E, k, renormalize),
          1e-6,
        );
        await expectSame(
          specs,
          (s, b) => tf.grad((x: tf.Tensor) => lossOf(gate(x, b!, k, renormalize)[0]!))(s!),
          (s) => tf.grad((x: tf.Tensor) => lossOf(refWeight(x, choices, T, E, k, renormalize)))(s!),
          1e-6,
        );
      });
    }
  }

  it('rejects a bad k, a bias of the wrong length and non-float scores with a clear error', async () => {
    await tf.setBackend('moelab-cpu');
    tf.tidy(() => {
      const s = tf.zeros([3, 4]);
      const none = tf.zeros([0]);
      expect(() => gate(s, none, 5, true)).toThrow(/MoelabSoftmaxTopK: attr k must be an integer in \[1, 4\], got 5/);
      expect(() => gate(s, none, 0, true)).toThrow(/attr k must be an integer in \[1, 4\], got 0/);
      expect(() => gate(s, tf.zeros([3]), 2, true)).toThrow(/'bias' has shape \[3\], expected \[0\]/);
      expect(() => gate(tf.zeros([3, 4], 'int32'), none, 2, true)).toThrow(/input 'scores' must be float32 \[T,E\]/);
      const bad = tf.tensor2d([0, 4, 1, 2, -1, 0], [2, 3], 'int32');
      expect(() =>
        tf.engine().runKernel(SOFTMAX_TOPK_GRAD_KERNEL, { dy: tf.zeros([2, 3]), scores: s, weight: tf.zeros([2, 3]), expert: bad }, {
          k: 2,
          renormalize: true,
        } as unknown as tf.NamedAttrMap),
      ).toThrow(/softmax top-k expert index 4 out of range \[-1, 4\)/);
    });
  });
});

/** The fused sigmoid gate on the backend under test: [weight [k,T], expert [k,T]]. */
function sigmoidGate(scores: tf.Tensor, k: number): tf.Tensor[] {
  return tf.engine().runKernel(SIGMOID_TOPK_KERNEL, { scores }, { k } as unknown as tf.NamedAttrMap) as tf.Tensor[];
}

/** weight [k,T] = sigmoid of the chosen scores (0 in an empty slot), picked out by a one-hot mask. */
function refSigmoidWeight(scores: tf.Tensor, choices: Int32Array, T: number, E: number, k: number): tf.Tensor {
  const mask = new Float32Array(k * T * E);
  choices.forEach((e, i) => {
    if (e >= 0) mask[i * E + e] = 1;
  });
  return tf.sum(tf.mul(tf.tensor3d(mask, [k, T, E]), tf.sigmoid(scores)), -1);
}

describe.skipIf(!status.available)(`fused sigmoid top-k gate equals the plain-tfjs reference (${status.reason})`, () => {
  const nanRow = randomCase('NaN entries are never chosen', 8, 6, 5, 2);
  nanRow.scores[0] = Number.NaN;
  nanRow.scores[5 + 3] = Number.NaN;
  for (const c of [...cases.filter((x) => !x.bias), nanRow]) {
    it(`${c.name}: choices, sigmoid weights and the gradient of the scores`, async () => {
      const { T, E, k } = c;
      const choices = choose(c.scores, new Float32Array(0), T, E, k);
      const proj = randArray(rng(98), k * T);
      const specs: Spec[] = [{ shape: [T, E], data: c.scores }];
      const lossOf = (w: tf.Tensor) => tf.sum(tf.mul(w, tf.tensor(proj, [k, T])));
      await tf.setBackend('moelab-cpu');
      const got = tf.tidy(() => sigmoidGate(tf.tensor2d(c.scores, [T, E]), k)[1]!.dataSync());
      expect(Array.from(got)).toEqual(Array.from(choices));
      // NaN scores make the masked reference NaN everywhere in their row: compare finite rows only.
      const finite = !c.scores.some((v) => Number.isNaN(v));
      if (finite) {
        await expectSame(
          specs,
          (s) => sigmoidGate(s!, k)[0]!,
          (s) => refSigmoidWeight(s!, choices, T, E, k),
          1e-7,
        );
        await expectSame(
          specs,
          (s) => tf.grad((x: tf.Tensor) => lossOf(sigmoidGate(x, k)[0]!))(s!),
          (s) => tf.grad((x: tf.Tensor) => lossOf(refSigmoidWeight(x, choices, T, E, k)))(s!),
          1e-7,
        );
      } else {
        const [w, g] = tf.tidy(() => {
          const s = tf.tensor2d(c.scores, [T, E]);
          return [
            sigmoidGate(s, k)[0]!.dataSync(),
            tf
              .grad((x: tf.Tensor) => lossOf(sigmoidGate(x, k)[0]!))(s)
              .dataSync(),
          ];
        });
        choices.forEach((e, i) => {
          const t = i % T;
          expect(w[i]).toBeCloseTo(e >= 0 ? 1 / (1 + Math.exp(-c.scores[t * E + e]!)) : 0, 6);
        });
        // The gradient is finite: zero but at the chosen (finite) scores.
        expect(Array.from(g).every(Number.isFinite)).toBe(true);
        expect(g.filter((v) => v !== 0).length).toBeLessThanOrEqual(choices.filter((e) => e >= 0).length);
      }
    });
  }

  it('no tokens: empty outputs and an empty gradient', async () => {
    await tf.setBackend('moelab-cpu');
    tf.tidy(() => {
      const s = tf.zeros([0, 8]);
      const [w, e] = sigmoidGate(s, 2);
      expect(w!.shape).toEqual([2, 0]);
      expect(e!.shape).toEqual([2, 0]);
      expect(tf.grad((x: tf.Tensor) => tf.sum(sigmoidGate(x, 2)[0]!))(s).shape).toEqual([0, 8]);
    });
  });

  it('rejects a bad k, non-float scores and out-of-range expert indices with a clear error', async () => {
    await tf.setBackend('moelab-cpu');
    tf.tidy(() => {
      const s = tf.zeros([3, 4]);
      expect(() => sigmoidGate(s, 5)).toThrow(/MoelabSigmoidTopK: attr k must be an integer in \[1, 4\], got 5/);
      expect(() => sigmoidGate(tf.zeros([3, 4], 'int32'), 2)).toThrow(/MoelabSigmoidTopK: input 'scores' must be float32 \[T,E\]/);
      const bad = tf.tensor2d([0, 4, 1, 2, -1, 0], [2, 3], 'int32');
      expect(() =>
        tf.engine().runKernel(SIGMOID_TOPK_GRAD_KERNEL, { dy: tf.zeros([2, 3]), scores: s, weight: tf.zeros([2, 3]), expert: bad }, {
          k: 2,
        } as unknown as tf.NamedAttrMap),
      ).toThrow(/sigmoid top-k expert index 4 out of range \[-1, 4\)/);
    });
  });
});
