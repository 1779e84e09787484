import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { fallbackCounts, resetFallbackCounts } from '../backend.js';
import { compare, NAME, randArray, randInts, rng, skipReason, type Spec, status } from '../testing/helpers.js';

const floats = (shape: number[], r: () => number, scale = 1): Spec => ({
  shape,
  data: randArray(
    r,
    shape.reduce((a, b) => a * b, 1),
    scale,
  ),
});
const ints = (shape: number[], r: () => number, limit: number): Spec => ({
  shape,
  data: randInts(
    r,
    shape.reduce((a, b) => a * b, 1),
    limit,
  ),
});

/** Same computation on cpu and on the backend under test, which must run all of it itself. */
async function expectOnDevice(specs: Spec[], fn: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[], tol = 1e-6) {
  resetFallbackCounts(NAME);
  await compare(specs, fn, tol);
  expect(fallbackCounts(NAME)).toEqual({});
}

describe.skipIf(!status.available)(`data movement and selection kernels on ${NAME} vs cpu${skipReason}`, () => {
  it('Slice, Concat, SplitV, Pack, Unpack, PadV2 and Transpose on float32, int32 and bool', async () => {
    const r = rng(51);
    const x = floats([3, 4, 5], r);
    const y = floats([3, 2, 5], r);
    const i = ints([3, 4, 5], r, 9);
    await expectOnDevice([x, y, i], (a, b, n) => {
      const flag = tf.greater(a!, 0);
      return [
        tf.slice(a!, [1, 0, 2], [2, -1, 3]),
        tf.slice(n!, [0, 3, 0], [3, 1, 5]),
        tf.slice(flag, [2, 1, 1], [1, 2, 2]),
        tf.concat([a!, b!], 1),
        tf.concat([a!, a!.slice([0, 0, 0], [3, 4, 0]), a!], 2),
        tf.concat([n!, n!], 0),
        tf.concat([flag, flag], -1),
        ...tf.split(a!, [1, 3, 1], 2),
        ...tf.split(n!, 2, 1),
        tf.stack([a!, a!.neg()], 1),
        tf.stack([n!, n!, n!], 3),
        ...tf.unstack(b!, 1),
        tf.pad(a!, [
          [0, 1],
          [2, 0],
          [1, 1],
        ]),
        tf.pad(
          n!,
          [
            [1, 1],
            [0, 0],
            [0, 2],
          ],
          7,
        ),
        tf.transpose(flag, [2, 0, 1]),
        tf.expandDims(a!, 1),
      ];
    });
  });

  it('comparisons, int32 arithmetic with broadcasting, Maximum / Minimum (NaN propagates), Pow', async () => {
    const r = rng(52);
    const a = floats([4, 1, 6], r);
    const b = floats([3, 6], r);
    const withNaN: Spec = { shape: [6], data: Float32Array.from([1, Number.NaN, -2, 0, Number.NaN, 3]) };
    const n = ints([4, 1, 6], r, 5);
    const m = ints([3, 6], r, 5);
    await expectOnDevice([a, b, withNaN, n, m], (x, y, z, p, q) => [
      tf.equal(x!, y!),
      tf.notEqual(p!, q!),
      tf.greater(x!, y!),
      tf.greaterEqual(p!, q!),
      tf.less(x!, z!),
      tf.lessEqual(p!, q!),
      tf.add(p!, q!),
      tf.sub(p!, q!),
      tf.mul(p!, q!),
      tf.squaredDifference(p!, q!),
      tf.maximum(x!, z!),
      tf.minimum(z!, y!),
      tf.maximum(p!, q!),
      tf.minimum(p!, q!),
      tf.pow(tf.abs(x!).add(0.1), y!),
    ]);
  });

  it('Select, AddN, Range, int32 fills, the added unaries', async () => {
    const r = rng(53);
    const a = floats([5, 7], r, 3);
    const b = floats([5, 7], r, 3);
    const c = floats([5, 7], r);
    await expectOnDevice(
      [a, b, c],
      (x, y, z) => [
        tf.where(tf.greater(x!, y!), x!, y!),
        tf.where(tf.less(x!, 0), x!.toInt(), y!.toInt()),
        tf.addN([x!, y!, z!]),
        tf.addN([x!]),
        tf.range(0, 17, 1, 'int32'),
        tf.range(3, -9, -2),
        tf.fill([2, 3], 4, 'int32'),
        tf.zerosLike(x!.toInt()),
        tf.onesLike(x!.toInt()),
        tf.erf(x!),
        tf.sin(x!),
        tf.cos(x!),
        tf.floor(x!),
        tf.ceil(x!),
        tf.elu(x!),
        tf.relu6(x!.mul(3)),
        tf.log1p(x!.abs()),
        tf.expm1(x!),
        tf.leakyRelu(x!, 0.3),
      ],
      1e-5,
    );
  });

  it('fallbacks: kernels taking a list of inputs (AddN of int32), a Range with a fractional step (tfjs sums it in float32)', async () => {
    const r = rng(54);
    resetFallbackCounts(NAME);
    await compare([ints([3, 4], r, 9), ints([3, 4], r, 9)], (p, q) => [tf.addN([p!, q!]), tf.range(0, 5, 0.1)], 0);
    expect(fallbackCounts(NAME)).toEqual({ AddN: 1, Range: 1 });
  });

  it('Slice with a window outside the tensor throws, as on cpu', async () => {
    await tf.setBackend(NAME);
    const x = tf.zeros([2, 3]);
    expect(() => tf.slice(x, [1, 1], [2, 2])).toThrow(/slice/i);
    x.dispose();
  });
});
