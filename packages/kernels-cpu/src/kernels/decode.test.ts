import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { CACHE_WRITE_KERNEL, CACHED_ATTENTION_KERNEL } from '@moelab/core/kernels';
import { compareBackends, randArray, rng, type Spec, status, underTest } from '../testing/helpers.js';

const f = (shape: number[], r: () => number, scale = 1): Spec => ({
  shape,
  data: randArray(
    r,
    shape.reduce((a, b) => a * b, 1),
    scale,
  ),
});
const has = (name: string) => tf.getKernel(name, tf.getBackend()) !== undefined;

/** The kernel where the backend has it, else op by op: cache[.., :p] ++ rows ++ cache[.., p+m:] along `axis`. */
function write(cache: tf.Tensor, rows: tf.Tensor, axis: number, position: number): tf.Tensor {
  if (has(CACHE_WRITE_KERNEL)) return tf.engine().runKernel(CACHE_WRITE_KERNEL, { cache, rows }, { axis, position }) as tf.Tensor;
  const m = rows.shape[axis]!;
  const C = cache.shape[axis]!;
  const part = (from: number, size: number) =>
    tf.slice(
      cache,
      cache.shape.map((_, i) => (i === axis ? from : 0)),
      cache.shape.map((s, i) => (i === axis ? size : s)),
    );
  return tf.concat([part(0, position), rows, part(position + m, C - position - m)], axis);
}

/**
 * The kernel where the backend has it, else op by op: the first `length` positions of k, v, each
 * key / value head repeated for its group of query heads, scores + offset causal mask, softmax, A.v.
 */
function cachedAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale: number, length: number): tf.Tensor {
  if (has(CACHED_ATTENTION_KERNEL)) return tf.engine().runKernel(CACHED_ATTENTION_KERNEL, { q, k, v }, { scale, length }) as tf.Tensor;
  const [, H, m] = q.shape as number[];
  const Hkv = k.shape[1]!;
  const heads = Array.from({ length: H! }, (_, h) => Math.floor((h * Hkv) / H!));
  const kk = tf.gather(tf.slice(k, [0, 0, 0, 0], [-1, -1, length, -1]), heads, 1);
  const vv = tf.gather(tf.slice(v, [0, 0, 0, 0], [-1, -1, length, -1]), heads, 1);
  const n0 = length - m!;
  const mask = tf.tensor2d(
    Float32Array.from({ length: m! * length }, (_, i) => (i % length > n0 + Math.floor(i / length) ? -1e9 : 0)),
    [m!, length],
  );
  const s = tf.add(tf.mul(tf.matMul(q as tf.Tensor4D, kk as tf.Tensor4D, false, true), scale), mask);
  return tf.matMul(tf.softmax(s) as tf.Tensor4D, vv as tf.Tensor4D);
}

afterAll(async () => {
  await tf.setBackend('cpu');
});

describe.skipIf(!status.available)(`cached decoding kernels equal the op-by-op versions (${status.reason})`, () => {
  it('MoelabCacheWrite: rows land at the position along the axis, everything else is kept', async () => {
    const r = rng(11);
    // [cache shape, rows along axis, axis, position]: first / middle / last positions, the time axis of
    // [B, H, T, d] and of [B, T, d], one row and several.
    const cases: [number[], number, number, number][] = [
      [[1, 4, 16, 8], 1, 2, 0],
      [[2, 3, 16, 8], 5, 2, 7],
      [[2, 3, 16, 8], 1, 2, 15],
      [[2, 9, 6], 3, 1, 6],
      [[5, 4], 2, 0, 1],
    ];
    for (const [shape, m, axis, position] of cases) {
      const rows = shape.map((s, i) => (i === axis ? m : s));
      await compareBackends([f(shape, r), f(rows, r)], (c, x) => write(c!, x!, axis, position), 0);
    }
  });

  // moelab-cpu's storage rules (a read hands out the array itself); moelab-wasm copies on read.
  it.skipIf(underTest !== 'moelab-cpu')('MoelabCacheWrite: in place only while the cache tensor alone can see its storage', async () => {
    await tf.setBackend('moelab-cpu');
    const dataOf = (t: tf.Tensor) => tf.engine().backend.readSync(t.dataId) as Float32Array;
    // The first write into a fresh tensor copies (its array came from the caller); the copy is owned.
    const zeros = tf.zeros([1, 2, 4, 3]);
    const first = write(zeros, tf.fill([1, 2, 1, 3], 1), 2, 0);
    expect(first.dataId).not.toBe(zeros.dataId);
    zeros.dispose();
    // Owned and held once: the second write goes into the same storage.
    const second = write(first, tf.fill([1, 2, 1, 3], 2), 2, 1);
    expect(second.dataId).toBe(first.dataId);
    first.dispose();
    // A second holder (a reshape shares the storage): a copy, and the other tensor keeps its values.
    const alias = tf.reshape(second, [2, 4, 3]);
    const third = write(second, tf.fill([1, 2, 1, 3], 3), 2, 2);
    expect(third.dataId).not.toBe(second.dataId);
    expect(Array.from(tf.slice(alias, [0, 2, 0], [1, 1, 3]).dataSync())).toEqual([0, 0, 0]);
    tf.dispose([alias, second]);
    // Storage read out (dataSync hands out the array itself): never written again.
    const seen = dataOf(third);
    const fourth = write(third, tf.fill([1, 2, 1, 3], 4), 2, 3);
    expect(fourth.dataId).not.toBe(third.dataId);
    expect(Array.from(seen.slice(9, 12))).toEqual([0, 0, 0]);
    expect(Array.from(fourth.dataSync().slice(0, 12))).toEqual([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    tf.dispose([third, fourth]);
  });

  it('MoelabCachedAttention: one new row or several, GQA, a cache longer than its length, dk != dv', async () => {
    const r = rng(12);
    // [B, H, Hkv, m, length, Tk, dk, dv]; the last is large enough for the thread pool.
    const cases: [number, number, number, number, number, number, number, number][] = [
      [1, 4, 4, 1, 1, 8, 8, 8],
      [1, 4, 4, 1, 37, 64, 16, 16],
      [2, 3, 3, 5, 20, 20, 8, 12],
      [2, 4, 2, 3, 9, 16, 8, 8],
      [1, 6, 1, 1, 12, 12, 4, 4],
      [2, 4, 4, 7, 7, 10, 8, 8],
      [2, 4, 2, 8, 300, 320, 64, 64],
    ];
    for (const [B, H, Hkv, m, length, Tk, dk, dv] of cases) {
      const specs = [f([B, H, m, dk], r, 2), f([B, Hkv, Tk, dk], r, 2), f([B, Hkv, Tk, dv], r)];
      await compareBackends(specs, (q, k, v) => cachedAttention(q!, k!, v!, 1 / Math.sqrt(dk), length), 1e-5);
    }
  });

  it('rejects bad shapes and attributes with a message naming them', async () => {
    await tf.setBackend('moelab-cpu');
    const cache = tf.zeros([1, 2, 4, 3]);
    const run = (rows: tf.Tensor, attrs: object) => () => tf.engine().runKernel(CACHE_WRITE_KERNEL, { cache, rows }, attrs as tf.NamedAttrMap);
    expect(run(tf.zeros([1, 2, 2, 3]), { axis: 2, position: 3 })).toThrow(/attr position must be an integer in \[0, 2\], got 3/);
    expect(run(tf.zeros([1, 3, 1, 3]), { axis: 2, position: 0 })).toThrow(/input 'rows' has shape \[1,3,1,3\], expected \[1,2,1,3\]/);
    expect(run(tf.zeros([1, 2, 1, 3]), { axis: 4, position: 0 })).toThrow(/attr axis must be an integer in \[0, 3\]/);
    const q = tf.zeros([1, 4, 2, 3]);
    const attend = (k: tf.Tensor, length: number) => () => tf.engine().runKernel(CACHED_ATTENTION_KERNEL, { q, k, v: k }, { scale: 1, length });
    expect(attend(cache, 1)).toThrow(/attr length must be an integer in \[2, 4\], got 1/);
    expect(attend(cache, 5)).toThrow(/attr length must be an integer in \[2, 4\], got 5/);
    expect(attend(tf.zeros([1, 3, 4, 3]), 4)).toThrow(/k has 3 heads, which must divide q's 4/);
    tf.dispose([cache, q]);
  });
});
