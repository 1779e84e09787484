import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { compareBackends, randArray, randInts, rng, type Spec, status, underTest } from './testing/helpers.js';

const f = (shape: number[], r: () => number): Spec => ({
  shape,
  data: randArray(
    r,
    shape.reduce((a, b) => a * b, 1),
  ),
});
const loss = (y: tf.Tensor, seed: number) => {
  // A fixed random projection, so every output element gets a distinct gradient.
  const w = tf.tensor(randArray(rng(seed), y.size), y.shape);
  return tf.sum(tf.mul(y, w));
};

afterAll(async () => {
  await tf.setBackend('cpu');
});

describe('availability', () => {
  it('reports what runs, or why not and how to build', () => {
    expect(typeof status.reason).toBe('string');
    expect(status.reason.length).toBeGreaterThan(10);
    if (status.available) {
      expect(['openblas', 'builtin']).toContain(status.blas);
      expect(status.threads).toBeGreaterThanOrEqual(1);
      expect(tf.findBackendFactory('moelab-cpu')).toBeTruthy();
    } else {
      expect(status.reason).toContain('pnpm rebuild @moelab/kernels-cpu');
      expect(status.threads).toBe(0);
    }
  });
});

describe.skipIf(!status.available)(`moelab-cpu kernels equal cpu (${status.reason})`, () => {
  it('BatchMatMul: 2-D with every transpose, forward and gradients', async () => {
    const r = rng(1);
    // One output row or column (a matrix-vector product on the BLAS path) among them.
    for (const [M, N, K] of [
      [1, 1, 1],
      [1, 70, 130],
      [33, 1, 130],
      [7, 19, 5],
      [33, 70, 130],
      [64, 48, 1],
      [130, 17, 260],
    ]) {
      for (const tA of [false, true]) {
        for (const tB of [false, true]) {
          const specs = [f(tA ? [K, M] : [M, K], r), f(tB ? [N, K] : [K, N], r)];
          await compareBackends(specs, (a, b) => tf.matMul(a, b, tA, tB), 1e-4);
          await compareBackends(specs, (a, b) => tf.grads((x: tf.Tensor, y: tf.Tensor) => loss(tf.matMul(x, y, tA, tB), 7))([a, b]), 1e-4);
        }
      }
    }
  });

  it('BatchMatMul: batched, rank 4 and batch broadcasting, forward and gradients', async () => {
    const r = rng(2);
    const cases: [number[], number[], boolean, boolean][] = [
      [[3, 5, 7], [3, 7, 4], false, false],
      [[3, 7, 5], [3, 4, 7], true, true],
      [[2, 3, 6, 5], [2, 3, 5, 9], false, false],
      [[1, 6, 5], [4, 5, 3], false, false],
      [[4, 6, 5], [5, 3], false, false],
      [[6, 5], [4, 3, 6], true, true],
      [[4, 6, 5], [1, 3, 5], false, true],
      [[16, 64, 48], [16, 48, 80], false, false],
    ];
    for (const [as, bs, tA, tB] of cases) {
      const specs = [f(as, r), f(bs, r)];
      await compareBackends(specs, (a, b) => tf.matMul(a, b, tA, tB), 1e-4);
      // tfjs's own BatchMatMul gradient does not reduce broadcast batch axes (it fails on cpu
      // too), so gradients are compared where it is defined: equal batch shapes.
      if (as.slice(0, -2).join() !== bs.slice(0, -2).join()) continue;
      await compareBackends(specs, (a, b) => tf.grads((x: tf.Tensor, y: tf.Tensor) => loss(tf.matMul(x, y, tA, tB), 3))([a, b]), 1e-4);
    }
  });

  it('BatchMatMul: general batch broadcasting ([2,1] x [1,3]) equals an explicit tile', async () => {
    // The stock cpu kernel indexes batches modulo their count, which is only right when one side's
    // batch is 1 or both match; the reference here tiles explicitly.
    const r = rng(3);
    const specs = [f([2, 1, 4, 5], r), f([1, 3, 5, 6], r)];
    const tiled = (a: tf.Tensor, b: tf.Tensor) => tf.matMul(tf.tile(a, [1, 3, 1, 1]), tf.tile(b, [2, 1, 1, 1]));
    const ref = await import('./testing/helpers.js').then((h) => h.runOn('cpu', specs, tiled));
    const got = await import('./testing/helpers.js').then((h) => h.runOn('moelab-cpu', specs, (a, b) => tf.matMul(a, b)));
    expect(got[0].shape).toEqual([2, 3, 4, 6]);
    const { maxRelDiff } = await import('./testing/helpers.js');
    expect(maxRelDiff(got[0].data, ref[0].data)).toBeLessThan(1e-5);
  });

  it('BatchMatMul: large enough to use the thread pool and the packed/BLAS path', async () => {
    const r = rng(4);
    await compareBackends([f([300, 257], r), f([257, 190], r)], (a, b) => tf.matMul(a, b), 1e-4);
    await compareBackends([f([257, 300], r), f([190, 257], r)], (a, b) => tf.matMul(a, b, true, true), 1e-4);
  });

  it('_FusedMatMul: bias and every activation, forward; gradients for linear and relu', async () => {
    const r = rng(5);
    const M = 9;
    const N = 11;
    const K = 6;
    for (const activation of ['linear', 'relu', 'relu6', 'sigmoid', 'elu', 'leakyrelu', 'prelu'] as const) {
      for (const biasShape of [[N], [M, N], [1, N], null]) {
        const specs = [f([M, K], r), f([K, N], r), f(biasShape ?? [1], r), f([N], r)];
        await compareBackends(
          specs,
          (a, b, bias, alpha) =>
            tf.fused.matMul({
              a: a as tf.Tensor2D,
              b: b as tf.Tensor2D,
              bias: biasShape ? bias : undefined,
              activation,
              preluActivationWeights: activation === 'prelu' ? alpha : undefined,
              leakyreluAlpha: 0.1,
            }),
          1e-4,
        );
      }
    }
    for (const activation of ['linear', 'relu'] as const) {
      const specs = [f([K, M], r), f([N, K], r), f([N], r)];
      await compareBackends(
        specs,
        (a, b, bias) =>
          tf.grads((x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) =>
            loss(tf.fused.matMul({ a: x as tf.Tensor2D, b: y as tf.Tensor2D, bias: z, activation, transposeA: true, transposeB: true }), 9),
          )([a, b, bias]),
        1e-4,
      );
    }
  });

  it('Transpose: random ranks and permutations, forward and gradients; int32 falls back', async () => {
    const r = rng(6);
    for (let trial = 0; trial < 40; trial++) {
      const rank = 1 + Math.floor(r() * 5);
      const shape = Array.from({ length: rank }, () => 1 + Math.floor(r() * 6));
      const perm = Array.from({ length: rank }, (_, i) => i).sort(() => r() - 0.5);
      await compareBackends([f(shape, r)], (x) => tf.transpose(x, perm), 0);
      await compareBackends([f(shape, r)], (x) => tf.grads((a: tf.Tensor) => loss(tf.transpose(a, perm), trial))([x]), 1e-6);
    }
    await compareBackends([f([70, 90], r)], (x) => tf.transpose(x), 0);
    await compareBackends([f([8, 40, 70], r)], (x) => tf.transpose(x, [0, 2, 1]), 0);
    await compareBackends([f([4, 8, 16, 5], r)], (x) => tf.transpose(x, [0, 2, 1, 3]), 0);
    await compareBackends([{ shape: [3, 4], data: randInts(r, 12, 100) }], (x) => tf.transpose(x), 0);
  });

  it('Multiply, Add, Sub, RealDiv, SquaredDifference: broadcasting, forward and gradients; int32 falls back', async () => {
    const r = rng(7);
    const pairs: [number[], number[]][] = [
      [
        [5, 7],
        [5, 7],
      ],
      [[5, 7], [7]],
      [
        [5, 7],
        [5, 1],
      ],
      [
        [5, 1],
        [1, 7],
      ],
      [
        [2, 3, 4],
        [3, 1],
      ],
      [
        [2, 1, 4],
        [2, 3, 1],
      ],
      [[], [4, 3]],
      [[4, 3], []],
      [
        [2, 3, 4, 5],
        [1, 3, 1, 5],
      ],
      [[64, 300], [300]],
      // Too few rows to share between threads: each row is split into column blocks (same shape:
      // one merged row of every element; a broadcast over 2 long rows; a scalar).
      [
        [300, 701],
        [300, 701],
      ],
      [
        [2, 100003],
        [1, 100003],
      ],
      [[140001], []],
    ];
    // Divisors kept away from zero so relative differences stay meaningful. Single IEEE operations
    // match the cpu kernels bit for bit (JS computes in double and rounds once, which is the same
    // result); (a - b)^2 rounds twice in float32, so it may differ in the last bit.
    const ops: [string, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor][] = [
      ['mul', (a, b) => tf.mul(a, b)],
      ['add', (a, b) => tf.add(a, b)],
      ['sub', (a, b) => tf.sub(a, b)],
      ['div', (a, b) => tf.div(a, tf.add(tf.abs(b), 0.5))],
      ['squaredDifference', (a, b) => tf.squaredDifference(a, b)],
    ];
    for (const [as, bs] of pairs) {
      for (const [name, op] of ops) {
        const worst = await compareBackends([f(as, r), f(bs, r)], (a, b) => op(a, b), name === 'squaredDifference' ? 1e-6 : 0);
        expect(worst, name).toBeLessThanOrEqual(1e-6);
        // tfjs's SquaredDifference gradient does not reduce over broadcast axes (a tfjs limitation).
        if (name === 'squaredDifference' && as.join() !== bs.join()) continue;
        await compareBackends([f(as, r), f(bs, r)], (a, b) => tf.grads((x: tf.Tensor, y: tf.Tensor) => loss(op(x, y), 11))([a, b]), 1e-5);
      }
    }
    await compareBackends(
      [
        { shape: [3, 4], data: randInts(r, 12, 50) },
        { shape: [4], data: randInts(r, 4, 50) },
      ],
      (a, b) => [tf.add(a, b), tf.sub(a, b)],
      0,
    );
    await compareBackends(
      [
        { shape: [3, 4], data: randInts(r, 12, 50) },
        { shape: [4], data: randInts(r, 4, 50) },
      ],
      (a, b) => tf.mul(a, b),
      0,
    );
    // A float32 tensor cast from bool keeps a Uint8Array behind it on the cpu backend.
    await compareBackends([f([6, 5], r), f([6, 5], r)], (a, b) => tf.mul(tf.cast(tf.greater(a, 0), 'float32'), b), 0);
  });

  it('Slice and PadV2: random strided blocks, forward and gradients (Slice grad = Pad); int32 falls back', async () => {
    const r = rng(12);
    for (let trial = 0; trial < 30; trial++) {
      const rank = 1 + Math.floor(r() * 4);
      const shape = Array.from({ length: rank }, () => 1 + Math.floor(r() * 6));
      const begin = shape.map((d) => Math.floor(r() * d));
      const size = shape.map((d, i) => (r() < 0.2 ? -1 : 1 + Math.floor(r() * (d - begin[i]))));
      await compareBackends([f(shape, r)], (x) => tf.slice(x, begin, size), 0);
      await compareBackends([f(shape, r)], (x) => tf.grads((a: tf.Tensor) => loss(tf.slice(a, begin, size), trial))([x]), 0);
      const pads = shape.map(() => [Math.floor(r() * 3), Math.floor(r() * 3)] as [number, number]);
      await compareBackends([f(shape, r)], (x) => [tf.pad(x, pads), tf.pad(x, pads, 1.5)], 0);
    }
    // RoPE-like: half of the last axis of [B, S, H, dh], with inner rows long enough for block copies.
    await compareBackends([f([2, 5, 3, 160], r)], (x) => [tf.slice(x, [0, 0, 0, 80], [-1, -1, -1, 80]), tf.slice(x, [1, 2, 0, 0], [1, 3, 3, 80])], 0);
    await compareBackends(
      [{ shape: [4, 5], data: randInts(r, 20, 9) }],
      (x) => [
        tf.slice(x, [1, 1], [2, 3]),
        tf.pad(x, [
          [1, 0],
          [0, 2],
        ]),
      ],
      0,
    );
  });

  it('SplitV, Sum, Mean, Max and the unaries: bit-identical to cpu, forward and gradients', async () => {
    const r = rng(13);
    for (let trial = 0; trial < 20; trial++) {
      const rank = 1 + Math.floor(r() * 4);
      const shape = Array.from({ length: rank }, () => 1 + Math.floor(r() * 6));
      const ax = Math.floor(r() * rank);
      const axes = Array.from({ length: rank }, (_, i) => i).filter(() => r() < 0.5);
      const keep = r() < 0.5;
      // At least two pieces: tfjs cannot differentiate a concat of a single tensor (on any backend).
      shape[ax] = Math.max(2, shape[ax]);
      const parts = [1, shape[ax] - 1];
      await compareBackends([f(shape, r)], (x) => tf.split(x, parts, ax), 0);
      await compareBackends([f(shape, r)], (x) => [tf.sum(x, axes, keep), tf.mean(x, axes, keep), tf.max(x, axes, keep), tf.sum(x), tf.max(x, ax)], 0);
      await compareBackends(
        [f(shape, r)],
        (x) => tf.grads((a: tf.Tensor) => loss(tf.concat(tf.split(tf.mul(tf.mean(a, ax, true), a), parts, ax), ax), trial))([x]),
        1e-6,
      );
    }
    // Large enough for the thread pool and for several 256-column blocks: leading axes (bias
    // gradients), a middle axis, trailing axes, and a non-adjacent pair (transposed first).
    for (const [shape, axes] of [
      [[300, 513], [0]],
      [
        [16, 40, 300],
        [0, 1],
      ],
      [[7, 130, 300], [1]],
      [
        [3, 50, 700],
        [1, 2],
      ],
      [
        [6, 20, 5, 30],
        [0, 2],
      ],
    ] as [number[], number[]][]) {
      await compareBackends([f(shape, r)], (x) => [tf.sum(x, axes), tf.mean(x, axes, true), tf.max(x, axes)], 0);
    }
    const withNaN = randArray(r, 40 * 300);
    withNaN[5 * 300 + 7] = Number.NaN;
    // NaN propagates through max and sum in the same places (compared as a mask plus the finite rest).
    const nanSplit = (t: tf.Tensor) => [tf.cast(tf.isNaN(t), 'float32'), tf.where(tf.isNaN(t), tf.zerosLike(t), t)];
    const maxOrSum = (x: tf.Tensor) => [tf.max(x, 0), tf.max(x, 1), tf.sum(x, 0)].flatMap(nanSplit);
    await compareBackends([{ shape: [40, 300], data: withNaN }], maxOrSum, 0);
    await tf.setBackend('moelab-cpu');
    const nanCols = tf.tidy(() => Array.from(tf.isNaN(tf.max(tf.tensor2d(withNaN, [40, 300]), 0)).dataSync()));
    expect(nanCols.filter((v) => v).length).toBe(1);
    expect(nanCols[7]).toBe(1);
    const unaries: ((x: tf.Tensor) => tf.Tensor)[] = [tf.sqrt, tf.rsqrt, tf.square, tf.neg, tf.exp, tf.log, tf.abs, tf.relu];
    await compareBackends([f([7, 9], r)], (x) => unaries.map((u) => u(tf.abs(x))), 0);
    await compareBackends([f([7, 9], r)], (x) => [tf.square, tf.neg, tf.exp, tf.abs, tf.relu].map((u) => u(x)), 0);
    await compareBackends([f([7, 9], r)], (x) => tf.grads((a: tf.Tensor) => loss(tf.add(tf.sqrt(tf.square(a)), tf.exp(tf.neg(tf.relu(a)))), 3))([x]), 0);
    // Relu / Step (relu's gradient) run threaded in place: big enough for the pool, NaN and 0 kept as in cpu.
    const big = randArray(r, 300 * 257);
    big[6] = 0;
    await compareBackends([{ shape: [300, 257], data: big }], (x) => [tf.relu(x), tf.step(x), tf.step(x, 0.25)], 0);
    await tf.setBackend('moelab-cpu');
    const special = tf.tensor1d([Number.NaN, 0, -1, 2]);
    expect(Array.from(tf.relu(special).dataSync())).toEqual([Number.NaN, 0, 0, 2]);
    expect(Array.from(tf.step(special, 0.5).dataSync())).toEqual([Number.NaN, 0.5, 0.5, 1]);
    special.dispose();
    await compareBackends([f([300, 257], r)], (x) => tf.grads((a: tf.Tensor) => loss(tf.relu(a), 4))([x]), 0);
    await compareBackends([{ shape: [3, 4], data: randInts(r, 12, 9) }], (x) => [tf.sum(x, 1), tf.max(x), tf.abs(x), tf.split(x, 2, 1)[1]!], 0);
  });

  it('GatherV2: axes and index ranks, forward and gradients; bad indices throw', async () => {
    const r = rng(8);
    const cases: [number[], number[], number, number][] = [
      [[10, 4], [7], 0, 10],
      [[10, 4], [3, 2], 0, 10],
      [[3, 10, 4], [12], 1, 10],
      [[3, 4, 10], [5], -1, 10],
      [[50, 64], [200], 0, 50],
    ];
    for (const [xs, is, axis, dim] of cases) {
      const specs: Spec[] = [
        f(xs, r),
        {
          shape: is,
          data: randInts(
            r,
            is.reduce((a, b) => a * b, 1),
            dim,
          ),
        },
      ];
      await compareBackends(specs, (x, i) => tf.gather(x, i, axis), 0);
      await compareBackends(specs, (x, i) => tf.grads((a: tf.Tensor) => loss(tf.gather(a, i, axis), 13))([x]), 1e-5);
    }
    await tf.setBackend('moelab-cpu');
    expect(() => tf.tidy(() => tf.gather(tf.zeros([3, 2]), tf.tensor1d([0, 3], 'int32')))).toThrow(/index value 3 is not in \[0, 2\]/);
  });

  it('Equal, NotEqual, Greater, GreaterEqual, Less, LessEqual: broadcasting, NaN, bool out like cpu', async () => {
    const r = rng(21);
    const x = randArray(r, 64 * 256 * 8);
    x[3] = Number.NaN;
    const xs: Spec = { shape: [64, 256, 8], data: x };
    const cmp = (a: tf.Tensor, b: tf.Tensor) => [tf.equal(a, b), tf.notEqual(a, b), tf.greater(a, b), tf.greaterEqual(a, b), tf.less(a, b), tf.lessEqual(a, b)];
    // Max's gradient: x against its own maximum broadcast back (ties and the NaN row included).
    await compareBackends([xs], (a) => cmp(a, tf.max(a, 1, true)), 0);
    await compareBackends([xs, f([8], r)], (a, b) => cmp(a, b), 0);
    await compareBackends([f([5, 1, 3], r), f([1, 4, 1], r)], (a, b) => cmp(a, b), 0);
    await compareBackends([f([140001], r), f([140001], r)], (a, b) => cmp(a, b), 0);
    await compareBackends([xs], (a) => tf.grads((t: tf.Tensor) => loss(tf.max(t, 1), 2))([a]), 0);
    await compareBackends([{ shape: [4], data: Int32Array.of(1, 2, 3, 4) }], (a) => tf.equal(a, tf.scalar(2, 'int32')), 0);
  });

  it('Exp: threaded over rows, bit-identical to cpu', async () => {
    const r = rng(22);
    await compareBackends([f([300, 257], r)], (x) => [tf.exp(x), tf.exp(tf.mul(x, 40))], 0);
    await compareBackends([{ shape: [], data: Float32Array.of(0.5) }], (x) => tf.exp(x), 0);
  });

  it('Sigmoid: threaded over rows, bit-identical to cpu (saturated ends; NaN stays NaN)', async () => {
    const r = rng(26);
    await compareBackends([f([300, 257], r)], (x) => [tf.sigmoid(x), tf.sigmoid(tf.mul(x, 60))], 0);
    await compareBackends([{ shape: [4], data: Float32Array.of(0, -1e30, 1e30, -0.25) }], (x) => tf.sigmoid(x), 0);
    await tf.setBackend('moelab-cpu');
    const y = tf.sigmoid(tf.tensor([Number.NaN, 100, -100]));
    expect(Array.from(y.dataSync())).toEqual([Number.NaN, 1, Math.fround(1 / (1 + Math.exp(100)))]);
    y.dispose();
  });

  it('MoelabAdamW: one fused step equals the op-by-op update (with and without decay, t = 1 and 7)', async () => {
    const r = rng(23);
    const step = (p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor, t: number, wd: number) => {
      const [lr, beta1, beta2, eps] = [3e-3, 0.9, 0.95, 1e-8];
      const bc1 = 1 - beta1 ** t;
      const bc2 = 1 - beta2 ** t;
      if (tf.getKernel('MoelabAdamW', tf.getBackend())) {
        return tf.engine().runKernel('MoelabAdamW', { p, g, m, v }, { lr, beta1, beta2, eps, weightDecay: wd, bc1, bc2 }) as tf.Tensor[];
      }
      const m2 = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
      const v2 = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
      const update = tf.div(tf.div(m2, bc1), tf.add(tf.sqrt(tf.div(v2, bc2)), eps));
      let next = tf.sub(p, tf.mul(update, lr));
      if (wd > 0) next = tf.sub(next, tf.mul(p, lr * wd));
      return [next, m2, v2];
    };
    const vSpec = (shape: number[]) => ({
      shape,
      data: randArray(
        r,
        shape.reduce((a, b) => a * b, 1),
      ).map(Math.abs),
    });
    for (const [shape, t, wd] of [
      [[300, 129], 1, 0.1],
      [[7], 7, 0],
      [[64, 32, 16], 7, 0.01],
    ] as [number[], number, number][]) {
      await compareBackends([f(shape, r), f(shape, r), f(shape, r), vSpec(shape)], (p, g, m, v) => step(p!, g!, m!, v!, t, wd), 0);
    }
    await tf.setBackend('moelab-cpu');
    const [a, b] = [tf.zeros([2, 3]), tf.zeros([3, 2])];
    expect(() =>
      tf.engine().runKernel('MoelabAdamW', { p: a, g: b, m: a, v: a }, { lr: 1, beta1: 0.9, beta2: 0.9, eps: 1, weightDecay: 0, bc1: 1, bc2: 1 }),
    ).toThrow(/input 'g' has shape \[3,2\], expected \[2,3\]/);
    tf.dispose([a, b]);
  });

  // moelab-cpu's storage rules (a read hands out the array itself); moelab-wasm copies on read.
  it.skipIf(underTest !== 'moelab-cpu')('MoelabAdamW: in place only on its own unseen, unshared buffers; every other holder keeps its values', async () => {
    await tf.setBackend('moelab-cpu');
    const r = rng(25);
    const data = () => randArray(r, 48);
    const attrs = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, bc1: 0.1, bc2: 0.05 };
    const run = (p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor) => tf.engine().runKernel('MoelabAdamW', { p, g, m, v }, attrs) as tf.Tensor[];
    const [pd, gd, md, vd] = [data(), data(), data(), data().map(Math.abs)];
    const snapshot = [pd, md, vd].map((a) => Array.from(a));
    const g = tf.tensor(gd, [6, 8]);
    // Step 1 on tensors made from user arrays: fresh outputs, the user's arrays untouched.
    const step1 = run(tf.tensor(pd, [6, 8]), g, tf.tensor(md, [6, 8]), tf.tensor(vd, [6, 8]));
    expect([pd, md, vd].map((a) => Array.from(a))).toEqual(snapshot);
    // What step 2 must produce, computed on copies (fresh buffers of the test's own).
    const copies = step1.map((t) => tf.tensor(Float32Array.from(t.dataSync()), t.shape));
    const want = run(copies[0]!, g, copies[1]!, copies[2]!).map((t) => Array.from(t.dataSync()));

    // Step 2 on step 1's outputs, which nobody has read (the copies above read them: redo step 1).
    const fresh1 = run(tf.tensor(pd, [6, 8]), g, tf.tensor(md, [6, 8]), tf.tensor(vd, [6, 8]));
    const before = tf.memory().numBytes;
    const step2 = run(fresh1[0]!, g, fresh1[1]!, fresh1[2]!);
    expect(step2.map((t) => t.dataId)).toEqual(fresh1.map((t) => t.dataId)); // in place
    expect(tf.memory().numBytes - before).toBe(3 * 48 * 4); // three more references, no new buffers
    expect(step2.map((t) => Array.from(t.dataSync()))).toEqual(want);

    // Read out (dataSync hands out the array itself): never overwritten afterwards.
    const read = step1[0]!.dataSync();
    const kept = Array.from(read);
    const after = run(step1[0]!, g, step1[1]!, step1[2]!);
    expect(after[0]!.dataId).not.toBe(step1[0]!.dataId);
    expect(Array.from(read)).toEqual(kept);
    expect(after.map((t) => Array.from(t.dataSync()))).toEqual(want);

    // Shared with another tensor (a reshape holds m's buffer), or viewed (a contiguous slice of v).
    const [mOld, vOld] = [Array.from(step1[1]!.dataSync()), Array.from(step1[2]!.dataSync())];
    const fresh2 = run(tf.tensor(pd, [6, 8]), g, tf.tensor(md, [6, 8]), tf.tensor(vd, [6, 8]));
    const alias = tf.reshape(fresh2[1]!, [48]);
    const out2 = run(fresh2[0]!, g, fresh2[1]!, fresh2[2]!);
    expect(out2[0]!.dataId).not.toBe(fresh2[0]!.dataId);
    expect(Array.from(alias.dataSync())).toEqual(mOld);
    expect(out2.map((t) => Array.from(t.dataSync()))).toEqual(want);
    const fresh3 = run(tf.tensor(pd, [6, 8]), g, tf.tensor(md, [6, 8]), tf.tensor(vd, [6, 8]));
    const view = tf.slice(fresh3[2]!, [0, 0], [3, 8]);
    const out3 = run(fresh3[0]!, g, fresh3[1]!, fresh3[2]!);
    expect(out3[0]!.dataId).not.toBe(fresh3[0]!.dataId);
    expect(Array.from(view.dataSync())).toEqual(vOld.slice(0, 24));
    expect(out3.map((t) => Array.from(t.dataSync()))).toEqual(want);

    // p passed as m too: never in place.
    const fresh4 = run(tf.tensor(pd, [6, 8]), g, tf.tensor(md, [6, 8]), tf.tensor(vd, [6, 8]));
    const same = run(fresh4[0]!, g, fresh4[0]!, fresh4[2]!);
    expect(same[0]!.dataId).not.toBe(fresh4[0]!.dataId);
    tf.dispose([g, ...step1, ...copies, ...fresh1, ...step2, ...after, ...fresh2, alias, ...out2, ...fresh3, view, ...out3, ...fresh4, ...same]);
  });

  it('MoelabSumOfSquares: equals tf.sum(tf.square(x)) on cpu (bit for bit up to 2^17 elements; blocked and threaded beyond, within 1 ulp)', async () => {
    const r = rng(24);
    const sumSq = (x: tf.Tensor) =>
      tf.getKernel('MoelabSumOfSquares', tf.getBackend()) ? (tf.engine().runKernel('MoelabSumOfSquares', { x }) as tf.Tensor) : tf.sum(tf.square(x));
    for (const shape of [[0], [], [7], [2, 65536]]) await compareBackends([f(shape, r)], sumSq, 0);
    // Parameter-sized, with a tail block; and with values of very different sizes.
    await compareBackends([f([64, 128, 257], r)], sumSq, 1.2e-7);
    const mixed = randArray(r, 300001).map((v, i) => (i % 1000 === 0 ? v * 1e3 : v));
    await compareBackends([{ shape: [300001], data: mixed }], sumSq, 1.2e-7);
  });

  it('Softmax: forward and gradients', async () => {
    const r = rng(9);
    for (const shape of [[5], [4, 7], [2, 3, 64], [100, 8]]) {
      await compareBackends([f(shape, r)], (x) => tf.softmax(tf.mul(x, 5)), 1e-6);
      await compareBackends([f(shape, r)], (x) => tf.grads((a: tf.Tensor) => loss(tf.softmax(a), 17))([x]), 1e-5);
    }
  });

  it('TopK: values and indices (ties to the lower index)', async () => {
    const r = rng(10);
    for (const [shape, k] of [
      [[10], 3],
      [[6, 9], 1],
      [[6, 9], 9],
      [[3, 5, 64], 4],
      [[4, 100], 40],
    ] as [number[], number][]) {
      await compareBackends(
        [f(shape, r)],
        (x) => {
          const o = tf.topk(x, k);
          return [o.values, o.indices];
        },
        0,
      );
      // Integer-valued inputs have many ties.
      const n = shape.reduce((a, b) => a * b, 1);
      const ties = Float32Array.from(randInts(r, n, 4));
      await compareBackends(
        [{ shape, data: ties }],
        (x) => {
          const o = tf.topk(x, k);
          return [o.values, o.indices];
        },
        0,
      );
    }
  });

  it('UnsortedSegmentSum: forward and gradients; ids outside [0, numSegments) are dropped', async () => {
    const r = rng(11);
    for (const [xs, ns] of [
      [[20, 6], 5],
      [[7], 3],
      [[30, 2, 3], 8],
      [[400, 64], 64],
    ] as [number[], number][]) {
      const specs: Spec[] = [f(xs, r), { shape: [xs[0]], data: randInts(r, xs[0], ns) }];
      await compareBackends(specs, (x, ids) => tf.unsortedSegmentSum(x, ids as tf.Tensor1D, ns), 1e-5);
      await compareBackends(specs, (x, ids) => tf.grads((a: tf.Tensor) => loss(tf.unsortedSegmentSum(a, ids as tf.Tensor1D, ns), 19))([x]), 1e-5);
    }
    const specs: Spec[] = [f([5, 3], r), { shape: [5], data: Int32Array.from([0, -1, 2, 9, 2]) }];
    await compareBackends(specs, (x, ids) => tf.unsortedSegmentSum(x, ids as tf.Tensor1D, 3), 1e-6);
  });

  it('keeps every stock cpu kernel (e.g. Conv2D, Cumsum) under the new name', async () => {
    const r = rng(12);
    await compareBackends([f([1, 6, 6, 2], r), f([3, 3, 2, 4], r)], (x, w) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, 'same'), 1e-5);
    await compareBackends([f([5, 4], r)], (x) => tf.cumsum(x, 1), 1e-6);
  });
});

// moelab-cpu switched to its builtin GEMM; moelab-wasm has no other (its SIMD128 micro-kernel).
const builtinGemm = underTest === 'moelab-cpu' || underTest === 'moelab-wasm';
describe.skipIf(!status.available || !builtinGemm)(`builtin packed GEMM equals cpu (${status.reason})`, () => {
  it('every transpose, edge sizes and pooled sizes', async () => {
    const { setGemm } = await import('./index.js');
    const before = status.blas;
    const onCpu = underTest === 'moelab-cpu';
    if (onCpu) expect(setGemm('builtin')).toBe('builtin');
    try {
      const r = rng(21);
      for (const [M, N, K] of [
        [1, 1, 1],
        [5, 17, 3],
        [7, 33, 300],
        [130, 70, 257],
        [250, 300, 120],
        // One row past a packed A block (MC = 120), odd, an edge column sliver, three K panels (KC = 256).
        [121, 47, 513],
      ]) {
        for (const tA of [false, true]) {
          for (const tB of [false, true]) {
            const specs = [f(tA ? [K, M] : [M, K], r), f(tB ? [N, K] : [K, N], r)];
            await compareBackends(specs, (a, b) => tf.matMul(a, b, tA, tB), 1e-4);
          }
        }
      }
      await compareBackends([f([4, 30, 20], r), f([4, 20, 50], r)], (a, b) => tf.matMul(a, b), 1e-4);
      await compareBackends([f([3, 0], r), f([0, 4], r)], (a, b) => tf.matMul(a, b), 0);
    } finally {
      if (onCpu) setGemm(before === 'openblas' ? 'openblas' : 'builtin');
    }
  });
});
