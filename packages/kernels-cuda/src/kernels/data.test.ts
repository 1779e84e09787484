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

  it('Cumsum and Cumprod along every axis, exclusive and reversed, float32 and int32 (tfjs-cpu’s order: bit-equal)', async () => {
    const r = rng(55);
    const x = floats([3, 4, 5], r);
    const p = floats([2, 9], r, 1.5);
    const n = ints([3, 4, 5], r, 7);
    const small = ints([3, 4, 5], r, 3);
    await expectOnDevice(
      [x, p, n, small],
      (a, b, i, m) => {
        const outs: tf.Tensor[] = [];
        for (const axis of [0, 1, 2])
          for (const exclusive of [false, true])
            for (const reverse of [false, true]) {
              outs.push(tf.cumsum(a!, axis, exclusive, reverse), tf.cumsum(i!, axis, exclusive, reverse));
              outs.push(tf.cumprod(m!, axis, exclusive, reverse));
              if (axis < 2) outs.push(tf.cumprod(b!, axis, exclusive, reverse));
            }
        // one element along the axis, an empty tensor, a scalar-like row
        outs.push(tf.cumsum(a!.slice([0, 0, 0], [3, 1, 5]), 1, true), tf.cumsum(a!.slice([0, 0, 0], [0, 4, 5]), 1), tf.cumsum(tf.tensor1d([2.5]), 0));
        return outs;
      },
      0,
    );
    // A negative axis counts from the end (tfjs-cpu's kernel mis-shapes it: compare with axis 2 there).
    resetFallbackCounts(NAME);
    await compare(
      [x],
      (a) => tf.cumsum(a!, 2, true),
      0,
      (a) => tf.cumsum(a!, -1, true),
    );
    expect(fallbackCounts(NAME)).toEqual({});
  });

  it('StridedSlice: steps, negative steps, masks, shrink and new axes, an empty result; float32, int32 and bool', async () => {
    const r = rng(56);
    const x = floats([4, 5, 6], r);
    const n = ints([4, 5, 6], r, 9);
    await expectOnDevice([x, n], (a, i) => {
      const flag = tf.greater(a!, 0);
      return [
        tf.stridedSlice(a!, [1, 0, 1], [4, 5, 6], [2, 2, 3]),
        tf.stridedSlice(a!, [3, 4, 5], [0, 0, 0], [-1, -2, -2]),
        tf.stridedSlice(a!, [-1, 0, 0], [-5, 5, 6], [-1, 1, 1]),
        tf.stridedSlice(i!, [0, 1, 0], [0, 4, 0], [1, 1, 2], 0b101, 0b101),
        tf.stridedSlice(a!, [2, 0, 1], [3, 5, 5], [1, 1, 1], 0, 0, 0, 0, 0b001),
        tf.stridedSlice(a!, [0, 1, 0], [4, 2, 6], [1, 1, 1], 0, 0, 0, 0b010, 0),
        tf.stridedSlice(a!, [1], [3], [1], 0, 0, 0b001),
        tf.stridedSlice(flag, [0, 4, 0], [4, 0, 6], [2, -1, 2]),
        tf.stridedSlice(a!, [3, 0, 0], [1, 5, 6], [2, 1, 1]),
        tf.stridedSlice(a!, [0, 0, 0], [4, 5, 6], [1, 1, 1]),
      ];
    });
    // begin past end with unit steps: an empty result (tfjs-cpu's kernel throws on it instead)
    await tf.setBackend(NAME);
    const empty = tf.stridedSlice(tf.ones([4, 5, 6]), [3, 0, 0], [1, 5, 6]);
    expect(empty.shape).toEqual([0, 5, 6]);
    empty.dispose();
  });

  it('Tile, and tf.where with operands of different shapes (which broadcasts them through Tile)', async () => {
    const r = rng(57);
    const x = floats([2, 3, 1], r);
    const y = floats([4, 1, 5], r);
    const n = ints([2, 3], r, 9);
    await expectOnDevice([x, y, n], (a, b, i) => {
      const cond = tf.greater(a!, 0);
      return [
        tf.tile(a!, [2, 1, 3]),
        tf.tile(i!, [3, 2]),
        tf.tile(cond, [1, 2, 2]),
        tf.tile(a!, [1, 0, 2]),
        tf.where(cond, a!, tf.scalar(-1)),
        tf.where(tf.greater(b!, 0), b!, a!.reshape([2, 3]).sum().reshape([1, 1, 1])),
        tf.where(tf.less(b!.slice([0, 0, 0], [1, 1, 5]), 0), tf.greater(b!, 0.5), tf.less(b!, -0.5)),
      ];
    });
  });

  it('Select with a condition per row of the values (TensorFlow’s rank-1 condition) equals the broadcast tf.where', async () => {
    // tfjs-cpu's own kernel repeats t's i-th element along row i instead of taking row i (as
    // TensorFlow and tfjs-webgl do): the reference is the broadcast form on cpu.
    const r = rng(58);
    const specs = [floats([4], r), floats([4, 3, 5], r), floats([4, 3, 5], r), ints([4, 3, 5], r, 9)];
    const select = (c: tf.Tensor, t: tf.Tensor, e: tf.Tensor) => tf.engine().runKernel('Select', { condition: c, t, e }) as tf.Tensor;
    const cases = (c: tf.Tensor, t: tf.Tensor, e: tf.Tensor, i: tf.Tensor, pick: typeof select) => {
      const rows = tf.greater(c, 0);
      return [
        pick(rows, t, e),
        pick(rows, i, i.mul(tf.scalar(-1, 'int32'))),
        pick(rows, tf.greater(t, 0), tf.greater(e, 0)),
        pick(tf.greater(c.slice(0, 1), 0), t.slice(0, 1), e.slice(0, 1)),
      ];
    };
    const broadcast = (c: tf.Tensor, t: tf.Tensor, e: tf.Tensor) => tf.where(tf.broadcastTo(c.reshape([c.shape[0]!, 1, 1]), t.shape), t, e);
    resetFallbackCounts(NAME);
    await compare(
      specs,
      (c, t, e, i) => cases(c!, t!, e!, i!, broadcast),
      0,
      (c, t, e, i) => cases(c!, t!, e!, i!, select),
    );
    expect(fallbackCounts(NAME)).toEqual({});
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
