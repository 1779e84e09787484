import { describe, expect, it } from 'vitest';
import { loadAddon, type Ptr } from './native.js';

// The addon's own contract, below the tfjs backend: descriptor arguments (named buffers and sizes)
// and their one-line errors, on the emulation build (what CI has), or on the device build with
// MOELAB_CUDA_TEST_DEVICE=1 (scripts/device-check.sh).
const { addon, reason } = loadAddon(process.env.MOELAB_CUDA_TEST_DEVICE === '1' ? 'device' : 'emulation');

describe.skipIf(!addon)(`moelab-cuda addon arguments${addon ? '' : ` (skipped: ${reason})`}`, () => {
  const native = addon!;
  const upload = (values: number[]): Ptr => {
    const p = native.alloc(values.length * 4);
    native.upload(p, Float32Array.from(values));
    return p;
  };
  const download = (p: Ptr, n: number): number[] => {
    const out = new Float32Array(n);
    native.download(p, out);
    return Array.from(out);
  };
  const gemmDims = { ta: false, tb: false, batch: 1, M: 2, N: 2, K: 3, strideA: 0, strideB: 0, act: 0, alpha: 0 };

  it('gemm takes its buffers and sizes by name: C = A B + bias, relu', () => {
    const A = upload([1, 2, 3, 4, 5, 6]);
    const B = upload([1, 0, 0, 1, 1, -1]);
    const bias = upload([0.5, -10]);
    const C = native.alloc(16);
    native.gemm({ A, B, C, bias }, { ...gemmDims, act: 1 });
    expect(download(C, 4)).toEqual([4.5, 0, 10.5, 0]);
    native.gemm({ A, B, C, bias: null }, gemmDims);
    expect(download(C, 4)).toEqual([4, -1, 10, -1]);
    for (const [p, n] of [
      [A, 24],
      [B, 24],
      [bias, 8],
      [C, 16],
    ] as const)
      native.free(p, n);
  });

  it('a missing buffer, a size that is not a number or an unknown pass is a one-line error naming it', () => {
    const A = upload([1, 2, 3, 4, 5, 6]);
    expect(() => native.gemm({ A, C: A } as never, gemmDims)).toThrow(/^moelab-cuda gemm: buffer 'B' is missing$/);
    expect(() => native.gemm({ A, B: A, C: A }, { ...gemmDims, M: '2' } as never)).toThrow(/^moelab-cuda gemm: field 'M' must be a number$/);
    expect(() => native.gemm({ A, B: 'x', C: A } as never, gemmDims)).toThrow(/^moelab-cuda gemm: buffer 'B' must be a device address$/);
    expect(() => native.layerNorm('sideways' as never, { x: A, gamma: A }, { rows: 1, D: 1 })).toThrow(
      /^moelab-cuda layerNorm: pass must be 'forward' or 'backward', got 'sideways'$/,
    );
    const dims = { T: 1, d: 1, h: 1, E: 1, N: 0, act: 0 };
    expect(() => native.moeExperts('forward', { x: A, w1: A, w2: A, tokenIndex: 0, expertIndex: 0, weight: 0, hidden: A }, dims)).toThrow(
      /^moelab-cuda moeExperts: buffer 'out' is missing$/,
    );
    expect(() => native.stridedCopy(A, A, { shape: [1, 1, 1, 1, 1, 1, 1], a: [1, 1, 1, 1, 1, 1, 1] }, 4)).toThrow(
      /^moelab-cuda stridedCopy: field 'shape' has rank 7, above 6$/,
    );
    expect(() => native.stridedCopy(A, A, { shape: [2, 3], a: [1] }, 4)).toThrow(/^moelab-cuda stridedCopy: strides 'a' must have the shape's rank$/);
    native.free(A, 24);
  });

  it('select reads its condition through strides; scan runs both ways', () => {
    const cond = native.alloc(2);
    native.upload(cond, Uint8Array.from([1, 0]));
    const t = upload([1, 2, 3, 4, 5, 6]);
    const e = upload([-1, -2, -3, -4, -5, -6]);
    const out = native.alloc(24);
    native.select(cond, t, e, out, { shape: [2, 3], a: [1, 0] }, 4);
    expect(download(out, 6)).toEqual([1, 2, 3, -4, -5, -6]);
    native.scan(t, out, { outer: 2, R: 3, inner: 1, product: false, exclusive: true, reverse: true, isInt: false });
    expect(download(out, 6)).toEqual([5, 3, 0, 11, 6, 0]);
    for (const [p, n] of [
      [cond, 2],
      [t, 24],
      [e, 24],
      [out, 24],
    ] as const)
      native.free(p, n);
  });
});
