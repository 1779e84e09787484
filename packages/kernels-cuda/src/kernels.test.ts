import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { fallbackCounts, resetFallbackCounts } from './backend.js';
import { compare, gemmTol, NAME, randArray, randInts, rng, runOn, skipReason, status } from './testing/helpers.js';

describe.skipIf(!status.available)(`moelab-cuda kernels vs cpu on ${NAME}${skipReason}`, () => {
  it('BatchMatMul: tile edges, transposes, batch broadcast, one row, K = 0', async () => {
    const r = rng(1);
    const cases: [number[], number[], boolean, boolean][] = [
      [[1, 1], [1, 1], false, false],
      [[70, 19], [19, 45], false, false],
      [[19, 70], [45, 19], true, true],
      [[65, 33], [40, 33], false, true],
      [[33, 65], [33, 40], true, false],
      [[3, 17, 9], [3, 9, 66], false, false],
      [[2, 3, 5, 7], [7, 4], false, false],
      [[6, 7], [2, 3, 7, 4], false, false],
      [[1, 64], [64, 1], false, false],
      [[4, 0], [0, 3], false, false],
    ];
    for (const [as, bs, ta, tb] of cases) {
      const specs = [
        {
          shape: as,
          data: randArray(
            r,
            as.reduce((a, b) => a * b, 1),
          ),
        },
        {
          shape: bs,
          data: randArray(
            r,
            bs.reduce((a, b) => a * b, 1),
          ),
        },
      ];
      await compare(specs, (a, b) => tf.matMul(a!, b!, ta, tb), gemmTol);
    }
  });

  it('_FusedMatMul: bias and activations, and their gradients', async () => {
    const r = rng(2);
    for (const activation of ['linear', 'relu', 'relu6', 'sigmoid', 'elu', 'leakyrelu'] as const) {
      const specs = [
        { shape: [37, 21], data: randArray(r, 37 * 21) },
        { shape: [21, 70], data: randArray(r, 21 * 70) },
        { shape: [70], data: randArray(r, 70) },
      ];
      const f = (a: tf.Tensor, b: tf.Tensor, bias: tf.Tensor) =>
        tf.fused.matMul({ a: a as tf.Tensor2D, b: b as tf.Tensor2D, bias, activation, leakyreluAlpha: 0.1 });
      await compare(specs, (a, b, bias) => f(a!, b!, bias!), gemmTol);
      await compare(specs, (a, b, bias) => tf.grads((a, b, bias) => f(a!, b!, bias!).square().sum())([a!, b!, bias!]), gemmTol);
    }
  });

  it('broadcast binaries, unaries, casts, fills', async () => {
    const r = rng(3);
    const a = { shape: [3, 1, 5], data: randArray(r, 15) };
    const b = { shape: [4, 1], data: randArray(r, 4) };
    for (const op of [tf.add, tf.sub, tf.mul, tf.div, tf.squaredDifference]) await compare([a, b], (x, y) => op(x!, y!));
    const pos = { shape: [2, 33], data: randArray(r, 66).map((v) => Math.abs(v) + 0.1) };
    for (const op of [tf.neg, tf.exp, tf.log, tf.sqrt, tf.rsqrt, tf.square, tf.relu, tf.sigmoid, tf.tanh, tf.abs, tf.reciprocal]) {
      await compare([pos], (x) => op(x!));
      await compare([a], (x) => op(x!.abs().add(0.5)));
    }
    await compare([a], (x) => tf.step(x!, 0.3));
    await compare([{ shape: [5], data: Int32Array.from([3, -2, 0, 7, 1]) }], (x) => [x!.toFloat(), x!.toFloat().mul(1.5).toInt()]);
    await compare([a], (x) => [tf.zerosLike(x!), tf.onesLike(x!), tf.fill([2, 3], 2.5), x!.reshape([5, -1])]);
  });

  it('Sum / Mean / Max over adjacent axes; other axes fall back and are counted', async () => {
    const r = rng(4);
    const x = { shape: [3, 4, 70], data: randArray(r, 3 * 4 * 70) };
    await compare([x], (t) => [t!.sum(), t!.sum(-1), t!.sum(0), t!.sum([0, 1]), t!.mean(1, true), t!.max(-1), t!.max([1, 2])]);
    resetFallbackCounts(NAME);
    await compare([x], (t) => t!.sum([0, 2]));
    expect(fallbackCounts(NAME).Sum).toBe(1);
  });

  it('Transpose, GatherV2, UnsortedSegmentSum, Softmax, TopK', async () => {
    const r = rng(5);
    const x = { shape: [2, 3, 4, 5], data: randArray(r, 120) };
    await compare([x], (t) => [t!.transpose([3, 1, 0, 2]), t!.transpose()]);
    const idx = { shape: [2, 2], data: Int32Array.from([2, 0, 1, 2]) };
    await compare([x, idx], (t, i) => [tf.gather(t!, i!, 1), tf.gather(t!.toInt(), i!, 1)]);
    const ids = { shape: [6], data: Int32Array.from([0, 3, 3, 1, 0, 4]) };
    await compare([{ shape: [6, 7], data: randArray(r, 42) }, ids], (t, i) => tf.unsortedSegmentSum(t!, i! as tf.Tensor1D, 5));
    await compare([{ shape: [5, 300], data: randArray(r, 1500, 5) }], (t) => tf.softmax(t!));
    const ties = { shape: [3, 6], data: Float32Array.from([1, 3, 3, 2, 3, 0, 5, 4, 3, 2, 1, 0, -1, -1, -1, -1, -1, -1]) };
    await compare([ties], (t) => {
      const { values, indices } = tf.topk(t!, 4);
      return [values, indices];
    });
  });

  it('GatherV2 with an index outside the axis throws, as on cpu', async () => {
    await tf.setBackend(NAME);
    const x = tf.tensor2d([1, 2, 3, 4], [2, 2]);
    expect(() => tf.gather(x, tf.tensor1d([0, 2], 'int32'))).toThrow(/index value 2 is not in \[0, 1\]/);
    x.dispose();
  });

  it('a kernel without a CUDA version falls back to the host, counted, with the right values', async () => {
    resetFallbackCounts(NAME);
    const x = { shape: [2, 5], data: randArray(rng(6), 10) };
    await compare([x], (t) => tf.atan2(t!.exp(), t!).mul(2));
    expect(fallbackCounts(NAME)).toEqual({ Atan2: 1 });
  });

  it('leaves no tensor storage behind: data ids and device bytes return to their baseline', async () => {
    await tf.setBackend(NAME);
    const be = tf.backend();
    const x = tf.tensor2d(randArray(rng(7), 40 * 24), [40, 24]);
    const w = tf.variable(tf.tensor2d(randArray(rng(8), 24 * 16), [24, 16]));
    const step = () => tf.tidy(() => tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.matMul(a, b).relu().square().mean())([x, w]));
    tf.dispose(step());
    const ids = be.numDataIds();
    const bytes = (be.memory() as unknown as { numBytesInGPU: number }).numBytesInGPU;
    for (let i = 0; i < 3; i++) tf.dispose(step());
    expect(be.numDataIds()).toBe(ids);
    expect((be.memory() as unknown as { numBytesInGPU: number }).numBytesInGPU).toBe(bytes);
    x.dispose();
    w.dispose();
  });

  it('reads back what was written (float32, int32, bool) and moves tensors between backends', async () => {
    await tf.setBackend('cpu');
    const a = tf.tensor1d([1.5, -2, 3]);
    await tf.setBackend(NAME);
    const b = tf.tensor1d([4, 5, 6], 'int32');
    const c = tf.tensor1d([true, false, true], 'bool');
    expect(Array.from(await a.add(1).data())).toEqual([2.5, -1, 4]);
    expect(Array.from(b.toFloat().mul(2).dataSync())).toEqual([8, 10, 12]);
    expect(Array.from(c.toFloat().dataSync())).toEqual([1, 0, 1]);
    expect(Array.from((await runOn(NAME, [], () => tf.tensor1d([7, 8]).neg()))[0]!.data)).toEqual([-7, -8]);
    tf.dispose([a, b, c]);
  });

  it('random shapes: GEMM chains with gradients', async () => {
    const r = rng(9);
    for (let trial = 0; trial < 4; trial++) {
      const [m, k, n] = [1 + randInts(r, 1, 80)[0]!, 1 + randInts(r, 1, 40)[0]!, 1 + randInts(r, 1, 80)[0]!];
      const specs = [
        { shape: [m, k], data: randArray(r, m * k) },
        { shape: [k, n], data: randArray(r, k * n) },
      ];
      await compare(specs, (a, b) => tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.matMul(a, b).tanh().sum())([a!, b!]), gemmTol);
    }
  });
});
