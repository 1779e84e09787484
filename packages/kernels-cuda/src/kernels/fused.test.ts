import * as tf from '@tensorflow/tfjs';
import { ADAMW_KERNEL, LAYER_NORM_KERNEL, MOE_PACKED_KERNEL, type MoeActivation } from '@moelab/core/kernels';
import { moeGLU, moeLinear, moeMLP } from '@moelab/kernels-cpu';
import { randPackedWeight } from '@moelab/kernels-cpu/testing/random';
import { describe, expect, it } from 'vitest';
import { fallbackCounts, resetFallbackCounts } from '../backend.js';
import { compare, gemmTol, NAME, randArray, randInts, rng, skipReason, status } from '../testing/helpers.js';

// The plain-tfjs definition of the fused MoE MLP, or GLU with w3 (runs on cpu, which has no fused kernel).
function moeReference(
  x: tf.Tensor,
  w1: tf.Tensor,
  w2: tf.Tensor,
  tok: tf.Tensor,
  exp: tf.Tensor,
  weight: tf.Tensor,
  act: MoeActivation,
  w3?: tf.Tensor,
): tf.Tensor {
  const xs = tf.gather(x, tok).expandDims(1);
  const pre = tf.matMul(xs, tf.gather(w1, exp)).squeeze([1]);
  let a =
    act === 'relu'
      ? pre.relu()
      : act === 'gelu'
        ? pre.mul(tf.erf(pre.mul(Math.SQRT1_2)).add(1)).mul(0.5)
        : act === 'silu'
          ? pre.mul(pre.sigmoid())
          : act === 'relu2'
            ? pre.relu().square()
            : pre;
  if (w3) a = a.mul(tf.matMul(xs, tf.gather(w3, exp)).squeeze([1]));
  const y = tf.matMul(a.expandDims(1), tf.gather(w2, exp)).squeeze([1]).mul(weight.expandDims(1));
  return tf.unsortedSegmentSum(y, tok as tf.Tensor1D, x.shape[0]!);
}

interface Case {
  T: number;
  d: number;
  h: number;
  E: number;
  tok: Int32Array;
  exp: Int32Array;
}

function specsOf(c: Case, seed: number) {
  const r = rng(seed);
  const N = c.tok.length;
  return [
    { shape: [c.T, c.d], data: randArray(r, c.T * c.d) },
    { shape: [c.E, c.d, c.h], data: randArray(r, c.E * c.d * c.h, 0.5) },
    { shape: [c.E, c.h, c.d], data: randArray(r, c.E * c.h * c.d, 0.5) },
    { shape: [N], data: c.tok },
    { shape: [N], data: c.exp },
    { shape: [N], data: randArray(r, N) },
    { shape: [c.T, c.d], data: randArray(r, c.T * c.d) },
  ];
}

// Top-k style assignments: token t goes to k experts drawn from `experts` (duplicates allowed).
function routed(r: () => number, T: number, k: number, experts: number[]): { tok: Int32Array; exp: Int32Array } {
  const tok = new Int32Array(T * k);
  const exp = new Int32Array(T * k);
  for (let i = 0; i < T * k; i++) {
    tok[i] = Math.floor(i / k);
    exp[i] = experts[Math.floor(r() * experts.length)]!;
  }
  return { tok, exp };
}

describe.skipIf(!status.available)(`fused kernels on ${NAME} vs the op-by-op reference on cpu${skipReason}`, () => {
  const r = rng(11);
  const cases: [string, Case][] = [
    ['ragged sizes, two empty experts', { T: 13, d: 7, h: 70, E: 5, ...routed(r, 13, 2, [0, 2, 3]) }],
    ['one token', { T: 1, d: 5, h: 3, E: 4, ...routed(r, 1, 2, [1, 3]) }],
    [
      'an expert over several row tiles',
      { T: 150, d: 9, h: 6, E: 3, tok: Int32Array.from({ length: 150 }, (_, i) => i), exp: Int32Array.from({ length: 150 }, (_, i) => (i % 7 === 0 ? 2 : 0)) },
    ],
    ['no assignments', { T: 4, d: 3, h: 5, E: 2, tok: new Int32Array(0), exp: new Int32Array(0) }],
    ['shuffled tokens', { T: 9, d: 16, h: 17, E: 6, tok: randInts(r, 20, 9), exp: randInts(r, 20, 6) }],
  ];

  for (const [label, c] of cases) {
    it(`MoelabMoeMLP forward and gradients: ${label}`, async () => {
      for (const act of ['relu', 'gelu', 'silu', 'relu2', 'identity'] as MoeActivation[]) {
        const specs = specsOf(c, c.T * 31 + c.h);
        const loss =
          (f: (...ts: tf.Tensor[]) => tf.Tensor) =>
          (x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor, tok: tf.Tensor, exp: tf.Tensor, weight: tf.Tensor, probe: tf.Tensor) => {
            const g = tf.grads((x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor, weight: tf.Tensor) => f(x, w1, w2, tok, exp, weight).mul(probe).sum());
            return [f(x, w1, w2, tok, exp, weight), ...g([x, w1, w2, weight])];
          };
        const ref = loss((x, w1, w2, tok, exp, weight) => moeReference(x!, w1!, w2!, tok!, exp!, weight!, act));
        const fused = loss((x, w1, w2, tok, exp, weight) =>
          moeMLP(x as tf.Tensor2D, w1 as tf.Tensor3D, w2 as tf.Tensor3D, tok as tf.Tensor1D, exp as tf.Tensor1D, weight as tf.Tensor1D, act, tf),
        );
        resetFallbackCounts(NAME);
        await compare(specs, ref as never, gemmTol, fused as never);
        expect(Object.keys(fallbackCounts(NAME)).filter((k) => k.startsWith('MoelabMoe'))).toEqual([]);
      }
    });
  }

  for (const [label, c] of [cases[0]!, cases[1]!, cases[3]!]) {
    it(`MoelabMoeGLU forward and gradients: ${label}`, async () => {
      for (const act of ['silu', 'gelu', 'relu'] as MoeActivation[]) {
        const r = rng(c.T * 17 + c.h);
        const specs = [...specsOf(c, c.T * 13 + c.d), { shape: [c.E, c.d, c.h], data: randArray(r, c.E * c.d * c.h, 0.5) }];
        const run =
          (f: (x: tf.Tensor, w1: tf.Tensor, w3: tf.Tensor, w2: tf.Tensor, weight: tf.Tensor, tok: tf.Tensor, exp: tf.Tensor) => tf.Tensor) =>
          (x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor, tok: tf.Tensor, exp: tf.Tensor, weight: tf.Tensor, probe: tf.Tensor, w3: tf.Tensor) => [
            f(x, w1, w3, w2, weight, tok, exp),
            ...tf.grads((x: tf.Tensor, w1: tf.Tensor, w3: tf.Tensor, w2: tf.Tensor, weight: tf.Tensor) => f(x, w1, w3, w2, weight, tok, exp).mul(probe).sum())([
              x,
              w1,
              w3,
              w2,
              weight,
            ]),
          ];
        const ref = run((x, w1, w3, w2, weight, tok, exp) => moeReference(x, w1, w2, tok, exp, weight, act, w3));
        const fused = run((x, w1, w3, w2, weight, tok, exp) =>
          moeGLU(
            x as tf.Tensor2D,
            w1 as tf.Tensor3D,
            w3 as tf.Tensor3D,
            w2 as tf.Tensor3D,
            tok as tf.Tensor1D,
            exp as tf.Tensor1D,
            weight as tf.Tensor1D,
            act,
            tf,
          ),
        );
        resetFallbackCounts(NAME);
        await compare(specs, ref as never, gemmTol, fused as never);
        expect(fallbackCounts(NAME)).toEqual({});
      }
    });
  }

  for (const [bits, group, gated] of [
    [4, 0, false],
    [3, 4, true],
    [2, 3, false],
    [8, 5, true],
  ] as const) {
    it(`MoelabMoePacked forward and gradients (x, weight): ${bits}-bit codes, group ${group}, ${gated ? 'GLU' : 'MLP'}`, async () => {
      const r = rng(bits * 10 + group);
      const [T, d, h, E] = [7, 9, 11, 4];
      const { tok, exp } = routed(r, T, 2, [0, 1, 3]);
      const N = tok.length;
      // Each as [codes, scale, zero, dequantized floats].
      const specsOfPacked = (w: ReturnType<typeof randPackedWeight>) => [
        { shape: w.codesShape, data: w.codes },
        { shape: w.scaleShape, data: w.scale },
        { shape: w.scaleShape, data: w.zero },
        { shape: [w.codesShape[0]!, w.codesShape[1]!, w.scaleShape[2]!], data: w.dense },
      ];
      const w1 = specsOfPacked(randPackedWeight(r, E, d, h, bits, group));
      const w3 = specsOfPacked(randPackedWeight(r, E, d, h, bits, group));
      const w2 = specsOfPacked(randPackedWeight(r, E, h, d, bits, group));
      const empty = { shape: [0], data: new Float32Array(0) };
      const emptyInt = { shape: [0], data: new Int32Array(0) };
      const specs = [
        { shape: [T, d], data: randArray(r, T * d) },
        { shape: [N], data: tok },
        { shape: [N], data: exp },
        { shape: [N], data: randArray(r, N) },
        { shape: [T, d], data: randArray(r, T * d) },
        w1[3]!,
        gated ? w3[3]! : empty,
        w2[3]!,
        ...w1.slice(0, 3),
        ...(gated ? w3.slice(0, 3) : [emptyInt, empty, empty]),
        ...w2.slice(0, 3),
      ];
      const act: MoeActivation = 'silu';
      type F = (x: tf.Tensor, weight: tf.Tensor, ...rest: tf.Tensor[]) => tf.Tensor;
      const run =
        (f: F) =>
        (x: tf.Tensor, tok: tf.Tensor, exp: tf.Tensor, weight: tf.Tensor, probe: tf.Tensor, ...rest: tf.Tensor[]) => [
          f(x, weight, tok, exp, ...rest),
          ...tf.grads((x: tf.Tensor, weight: tf.Tensor) =>
            f(x, weight, tok, exp, ...rest)
              .mul(probe)
              .sum(),
          )([x, weight]),
        ];
      const ref = run((x, weight, tok, exp, w1f, w3f, w2f) => moeReference(x, w1f!, w2f!, tok!, exp!, weight, act, gated ? w3f : undefined));
      const fused = run((x, weight, tok, exp, _w1f, _w3f, _w2f, w1Codes, w1Scale, w1Zero, w3Codes, w3Scale, w3Zero, w2Codes, w2Scale, w2Zero) => {
        const [out, hidden] = tf
          .engine()
          .runKernel(
            MOE_PACKED_KERNEL,
            { x, w1Codes, w1Scale, w1Zero, w3Codes, w3Scale, w3Zero, w2Codes, w2Scale, w2Zero, tokenIndex: tok, expertIndex: exp, weight } as tf.NamedTensorMap,
            { activation: act, bits, group },
          ) as tf.Tensor[];
        hidden!.dispose();
        return out!;
      });
      resetFallbackCounts(NAME);
      await compare(specs as never, ref as never, 1e-4, fused as never);
      expect(fallbackCounts(NAME)).toEqual({});
    });
  }

  it('MoelabMoeLinear forward and gradients (SwitchHead-style rows)', async () => {
    const r2 = rng(12);
    const [R, din, dout, E, N, outRows] = [11, 6, 67, 4, 19, 8];
    const specs = [
      { shape: [R, din], data: randArray(r2, R * din) },
      { shape: [E, din, dout], data: randArray(r2, E * din * dout) },
      { shape: [N], data: randInts(r2, N, R) },
      { shape: [N], data: randInts(r2, N, outRows) },
      { shape: [N], data: randInts(r2, N, E - 1) },
      { shape: [N], data: randArray(r2, N) },
      { shape: [outRows, dout], data: randArray(r2, outRows * dout) },
    ];
    const run =
      (f: (x: tf.Tensor, w: tf.Tensor, weight: tf.Tensor, inRow: tf.Tensor, outRow: tf.Tensor, exp: tf.Tensor) => tf.Tensor) =>
      (x: tf.Tensor, w: tf.Tensor, inRow: tf.Tensor, outRow: tf.Tensor, exp: tf.Tensor, weight: tf.Tensor, probe: tf.Tensor) => [
        f(x, w, weight, inRow, outRow, exp),
        ...tf.grads((x: tf.Tensor, w: tf.Tensor, weight: tf.Tensor) => f(x, w, weight, inRow, outRow, exp).mul(probe).sum())([x, w, weight]),
      ];
    const ref = run((x, w, weight, inRow, outRow, exp) => {
      const y = tf.matMul(tf.gather(x, inRow).expandDims(1), tf.gather(w, exp)).squeeze([1]).mul(weight.expandDims(1));
      return tf.unsortedSegmentSum(y, outRow as tf.Tensor1D, outRows);
    });
    const fused = run((x, w, weight, inRow, outRow, exp) =>
      moeLinear(x as tf.Tensor2D, w as tf.Tensor3D, inRow as tf.Tensor1D, outRow as tf.Tensor1D, exp as tf.Tensor1D, weight as tf.Tensor1D, outRows, tf),
    );
    await compare(specs, ref as never, gemmTol, fused as never);
  });

  it('MoelabMoeMLP with an expert index out of range throws a one-line error naming it', async () => {
    await tf.setBackend(NAME);
    const x = tf.zeros([2, 3]);
    const w1 = tf.zeros([2, 3, 4]);
    const w2 = tf.zeros([2, 4, 3]);
    const ids = tf.tensor1d([0, 1], 'int32');
    const bad = tf.tensor1d([1, 2], 'int32');
    const weight = tf.ones([2]);
    const before = tf.memory().numTensors;
    expect(() =>
      moeMLP(x as tf.Tensor2D, w1 as tf.Tensor3D, w2 as tf.Tensor3D, ids as tf.Tensor1D, bad as tf.Tensor1D, weight as tf.Tensor1D, 'relu', tf),
    ).toThrow(/^MoelabMoeMLP: expertIndex\[1\] = 2 is outside \[0, 2\)$/);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, w1, w2, ids, bad, weight]);
  });

  it('MoelabLayerNorm forward and gradients (with and without beta)', async () => {
    const r3 = rng(13);
    const [rows, D] = [7, 300];
    const specs = [
      { shape: [rows, D], data: randArray(r3, rows * D, 3) },
      { shape: [D], data: randArray(r3, D) },
      { shape: [D], data: randArray(r3, D) },
      { shape: [rows, D], data: randArray(r3, rows * D) },
    ];
    for (const hasBeta of [true, false]) {
      const fused = (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => {
        const ins: tf.NamedTensorMap = hasBeta ? { x, gamma, beta } : { x, gamma };
        return (tf.engine().runKernel(LAYER_NORM_KERNEL, ins, { eps: 1e-5, hasBeta }) as tf.Tensor[])[0]!;
      };
      const ref = (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => {
        const { mean, variance } = tf.moments(x, -1, true);
        const y = x.sub(mean).div(variance.add(1e-5).sqrt()).mul(gamma);
        return hasBeta ? y.add(beta) : y;
      };
      const both = (f: typeof ref) => (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, probe: tf.Tensor) => [
        f(x, gamma, beta),
        ...(hasBeta
          ? tf.grads((x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => f(x, gamma, beta).mul(probe).sum())([x, gamma, beta])
          : tf.grads((x: tf.Tensor, gamma: tf.Tensor) => f(x, gamma, beta).mul(probe).sum())([x, gamma])),
      ];
      await compare(specs, both(ref) as never, 1e-4, both(fused) as never);
    }
  });

  it('MoelabAdamW matches the op-by-op update', async () => {
    const r4 = rng(14);
    const n = 1000;
    const specs = ['p', 'g', 'm', 'v'].map((k) => ({ shape: [10, 100], data: k === 'v' ? randArray(r4, n).map(Math.abs) : randArray(r4, n) }));
    const a = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, bc1: 1 - 0.9 ** 3, bc2: 1 - 0.95 ** 3 };
    const ref = (p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor) => {
      const m2 = m.mul(a.beta1).add(g.mul(1 - a.beta1));
      const v2 = v.mul(a.beta2).add(g.square().mul(1 - a.beta2));
      const update = m2.div(a.bc1).div(v2.div(a.bc2).sqrt().add(a.eps));
      return [p.sub(update.mul(a.lr)).sub(p.mul(a.lr * a.weightDecay)), m2, v2];
    };
    const fused = (p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor) => tf.engine().runKernel(ADAMW_KERNEL, { p, g, m, v }, a) as tf.Tensor[];
    await compare(specs, ref as never, 1e-6, fused as never);
  });
});
