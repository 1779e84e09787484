import * as tf from '@tensorflow/tfjs';
import { MOE_MLP_GRAD_KERNEL, MOE_MLP_KERNEL } from '@moelab/core/kernels';
import { afterAll, describe, expect, it } from 'vitest';
import { type MoeActivation, moeLinear, moeMLP } from '../index.js';
import { randArray, rng, type Spec, status } from '../testing/helpers.js';
import { act, expectSame, expertSpecs, mlpCases, oneHot } from '../testing/moe-reference.js';

afterAll(async () => {
  await tf.setBackend('cpu');
});

/** The definition, one assignment at a time, in plain tfjs ops (run on the stock cpu backend). */
function refMLP(x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor, tok: tf.Tensor, exp: tf.Tensor, wt: tf.Tensor, a: MoeActivation): tf.Tensor {
  const [T, d] = x.shape;
  const N = tok.size;
  // Zero, but still a function of every input, so tf.grads yields (zero) gradients for all of them.
  if (N === 0) return tf.add(tf.mul(x, 0), tf.mul(tf.add(tf.sum(w1), tf.add(tf.sum(w2), tf.sum(wt))), 0));
  // Token gather and combine as one-hot matmuls: same maths, and the stock cpu gradient of
  // gather/unsortedSegmentSum is quadratic (docs/engine.md#side-effects-of-importing-core), too slow for the bigger cases.
  const oh = oneHot(tok, T);
  const xs = tf.reshape(tf.matMul(oh, x), [N, 1, d]);
  const h = act(tf.matMul(xs, tf.gather(w1, exp)), a);
  const y = tf.reshape(tf.matMul(h, tf.gather(w2, exp)), [N, d]);
  return tf.matMul(oh, tf.mul(y, tf.reshape(wt, [N, 1])), true, false);
}

function refLinear(x: tf.Tensor, w: tf.Tensor, inRow: tf.Tensor, outRow: tf.Tensor, exp: tf.Tensor, wt: tf.Tensor, outRows: number): tf.Tensor {
  const din = x.shape[1] as number;
  const dout = w.shape[2] as number;
  const N = inRow.size;
  if (N === 0) return tf.add(tf.zeros([outRows, dout]), tf.mul(tf.add(tf.sum(x), tf.add(tf.sum(w), tf.sum(wt))), 0));
  const ohIn = oneHot(inRow, x.shape[0]);
  const ohOut = oneHot(outRow, outRows);
  const y = tf.reshape(tf.matMul(tf.reshape(tf.matMul(ohIn, x), [N, 1, din]), tf.gather(w, exp)), [N, dout]);
  return tf.matMul(ohOut, tf.mul(y, tf.reshape(wt, [N, 1])), true, false);
}

describe.skipIf(!status.available)(`fused MoE ops equal the plain-tfjs reference (${status.reason})`, () => {
  for (const c of mlpCases) {
    for (const a of ['relu', 'gelu', 'silu', 'relu2', 'identity'] as MoeActivation[]) {
      it(`MoelabMoeMLP ${a}: ${c.name} (forward and gradients of x, w1, w2, weight)`, async () => {
        const specs = expertSpecs(c, 100 + c.T + a.length, false);
        const proj = randArray(rng(9), c.T * c.d);
        const lossOf = (y: tf.Tensor) => tf.sum(tf.mul(y, tf.tensor(proj, y.shape)));
        await expectSame(
          specs,
          (x, w1, w2, tok, exp, wt) =>
            moeMLP(x as tf.Tensor2D, w1 as tf.Tensor3D, w2 as tf.Tensor3D, tok as tf.Tensor1D, exp as tf.Tensor1D, wt as tf.Tensor1D, a),
          (x, w1, w2, tok, exp, wt) => refMLP(x, w1, w2, tok, exp, wt, a),
          2e-5,
        );
        await expectSame(
          specs,
          (x, w1, w2, tok, exp, wt) =>
            tf.grads((p: tf.Tensor, q: tf.Tensor, s: tf.Tensor, u: tf.Tensor) =>
              lossOf(moeMLP(p as tf.Tensor2D, q as tf.Tensor3D, s as tf.Tensor3D, tok as tf.Tensor1D, exp as tf.Tensor1D, u as tf.Tensor1D, a)),
            )([x, w1, w2, wt]),
          (x, w1, w2, tok, exp, wt) =>
            tf.grads((p: tf.Tensor, q: tf.Tensor, s: tf.Tensor, u: tf.Tensor) => lossOf(refMLP(p, q, s, tok, exp, u, a)))([x, w1, w2, wt]),
          5e-5,
        );
      });
    }
  }

  const linCases: { name: string; R: number; din: number; dout: number; E: number; outRows: number; inRow: number[]; outRow: number[]; exp: number[] }[] = [
    {
      name: 'rows to rows, shuffled, expert 2 empty',
      R: 6,
      din: 5,
      dout: 3,
      E: 4,
      outRows: 6,
      inRow: [5, 0, 3, 3, 1, 2, 0],
      outRow: [5, 0, 3, 3, 1, 2, 4],
      exp: [0, 3, 1, 0, 3, 1, 1],
    },
    {
      name: 'fan-in: many inputs summed into 2 rows',
      R: 9,
      din: 4,
      dout: 7,
      E: 3,
      outRows: 2,
      inRow: [0, 1, 2, 3, 4, 5, 6, 7, 8],
      outRow: [1, 0, 1, 0, 1, 1, 0, 0, 1],
      exp: [2, 2, 0, 1, 2, 0, 0, 1, 2],
    },
    { name: 'N = 0', R: 3, din: 4, dout: 2, E: 2, outRows: 5, inRow: [], outRow: [], exp: [] },
    { name: 'one row', R: 1, din: 3, dout: 3, E: 5, outRows: 1, inRow: [0], outRow: [0], exp: [4] },
  ];
  {
    // SwitchHead-like: 512 rows, 8 experts, top-2, big enough for the thread pool.
    const r = rng(77);
    const inRow: number[] = [];
    const outRow: number[] = [];
    const exp: number[] = [];
    for (let i = 0; i < 512; i++)
      for (let j = 0; j < 2; j++) {
        inRow.push(i);
        outRow.push(i);
        exp.push(Math.floor(r() * 8));
      }
    linCases.push({ name: 'SwitchHead-like 512 rows, E=8 top-2', R: 512, din: 64, dout: 32, E: 8, outRows: 512, inRow, outRow, exp });
  }
  for (const c of linCases) {
    it(`MoelabMoeLinear: ${c.name} (forward and gradients of x, w, weight)`, async () => {
      const r = rng(c.R * 31 + c.E);
      const N = c.inRow.length;
      const specs: Spec[] = [
        { shape: [c.R, c.din], data: randArray(r, c.R * c.din) },
        { shape: [c.E, c.din, c.dout], data: randArray(r, c.E * c.din * c.dout) },
        { shape: [N], data: Int32Array.from(c.inRow) },
        { shape: [N], data: Int32Array.from(c.outRow) },
        { shape: [N], data: Int32Array.from(c.exp) },
        { shape: [N], data: randArray(r, N) },
      ];
      const proj = randArray(rng(5), c.outRows * c.dout);
      const lossOf = (y: tf.Tensor) => tf.sum(tf.mul(y, tf.tensor(proj, y.shape)));
      const fast = (x: tf.Tensor, w: tf.Tensor, i: tf.Tensor, o: tf.Tensor, e: tf.Tensor, wt: tf.Tensor) =>
        moeLinear(x as tf.Tensor2D, w as tf.Tensor3D, i as tf.Tensor1D, o as tf.Tensor1D, e as tf.Tensor1D, wt as tf.Tensor1D, c.outRows);
      const ref = (x: tf.Tensor, w: tf.Tensor, i: tf.Tensor, o: tf.Tensor, e: tf.Tensor, wt: tf.Tensor) => refLinear(x, w, i, o, e, wt, c.outRows);
      await expectSame(specs, fast, ref, 2e-5);
      await expectSame(
        specs,
        (x, w, i, o, e, wt) => tf.grads((p: tf.Tensor, q: tf.Tensor, s: tf.Tensor) => lossOf(fast(p, q, i, o, e, s)))([x, w, wt]),
        (x, w, i, o, e, wt) => tf.grads((p: tf.Tensor, q: tf.Tensor, s: tf.Tensor) => lossOf(ref(p, q, i, o, e, s)))([x, w, wt]),
        5e-5,
      );
    });
  }

  it('rejects out-of-range indices and wrong shapes with a clear error', async () => {
    await tf.setBackend('moelab-cpu');
    tf.tidy(() => {
      const x = tf.zeros([3, 4]) as tf.Tensor2D;
      const w1 = tf.zeros([2, 4, 5]) as tf.Tensor3D;
      const w2 = tf.zeros([2, 5, 4]) as tf.Tensor3D;
      const ok = tf.tensor1d([0, 1], 'int32');
      const wt = tf.ones([2]) as tf.Tensor1D;
      expect(() => moeMLP(x, w1, w2, tf.tensor1d([0, 3], 'int32'), ok, wt, 'relu')).toThrow(/tokenIndex\[1\] = 3 is outside \[0, 3\)/);
      expect(() => moeMLP(x, w1, w2, ok, tf.tensor1d([2, 0], 'int32'), wt, 'relu')).toThrow(/expertIndex\[0\] = 2 is outside \[0, 2\)/);
      expect(() => moeMLP(x, w1, tf.zeros([2, 4, 4]) as tf.Tensor3D, ok, ok, wt, 'relu')).toThrow(/'w2' has shape \[2,4,4\], expected \[2,5,4\]/);
      expect(() => moeMLP(x, w1, w2, ok, ok, wt, 'tanh' as MoeActivation)).toThrow(/unknown activation 'tanh'/);
    });
  });

  it('hidden is a [0]-shaped handle (the tape zero-fills nothing N x h for it) that only the Grad kernel reads', async () => {
    await tf.setBackend('moelab-cpu');
    const r = rng(31);
    const [T, d, h, E] = [5, 4, 3, 2];
    const x = tf.tensor2d(randArray(r, T * d), [T, d]);
    const w1 = tf.tensor3d(randArray(r, E * d * h), [E, d, h]);
    const w2 = tf.tensor3d(randArray(r, E * h * d), [E, h, d]);
    const tok = tf.tensor1d([0, 1, 2, 3, 4, 0], 'int32');
    const exp = tf.tensor1d([0, 1, 1, 0, 1, 1], 'int32');
    const wt = tf.tensor1d(randArray(r, 6));
    const [out, hidden] = tf.engine().runKernel(MOE_MLP_KERNEL, { x, w1, w2, tokenIndex: tok, expertIndex: exp, weight: wt }, {
      activation: 'relu',
    } as unknown as tf.NamedAttrMap) as tf.Tensor[];
    expect(hidden!.shape).toEqual([0]);
    // Its storage holds N x h pre-activations: the Grad kernel's dx equals the reference gradient's.
    const [dx] = tf
      .engine()
      .runKernel(MOE_MLP_GRAD_KERNEL, { dy: tf.onesLike(out!), x, w1, w2, tokenIndex: tok, expertIndex: exp, weight: wt, hidden: hidden! }, {
        activation: 'relu',
      } as unknown as tf.NamedAttrMap) as tf.Tensor[];
    const want = tf.grad((xx: tf.Tensor) => tf.sum(moeMLP(xx as tf.Tensor2D, w1, w2, tok, exp, wt, 'relu')))(x);
    expect(Array.from(dx!.dataSync())).toEqual(Array.from(want.dataSync()));
    // Anything but the forward's handle is refused with the kernel's name.
    const wrong = { dy: tf.onesLike(out!), x, w1, w2, tokenIndex: tok, expertIndex: exp, weight: wt, hidden: tf.zeros([6, h + 1]) };
    expect(() => tf.engine().runKernel(MOE_MLP_GRAD_KERNEL, wrong, { activation: 'relu' } as unknown as tf.NamedAttrMap)).toThrow(
      /MoelabMoeMLPGrad: input 'hidden' must be the forward kernel's second output \(holding 18 float32 values\), got 24 values/,
    );
    tf.dispose([x, w1, w2, tok, exp, wt, out!, hidden!, dx!, want]);
  });
});
