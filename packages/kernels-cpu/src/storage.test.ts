import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { pooledStorageBytes, releasePooledStorage } from './index.js';
import { randArray, rng, status } from './testing/helpers.js';

afterAll(async () => {
  releasePooledStorage(2 * 2 ** 30);
  await tf.setBackend('cpu');
});

// The backend's own array behind a tensor, looked up without reading the tensor out (dataSync
// would hand the array out and, rightly, stop its reuse).
const storage = (t: tf.Tensor) => (tf.backend() as unknown as { data: { get(id: object): { values: Float32Array } } }).data.get(t.dataId).values;

describe.skipIf(!status.available)(`kernel output storage is recycled only when nobody can see it (${status.reason})`, () => {
  const n = 128; // [128,128] outputs: 16384 floats, the smallest pooled size
  let a: tf.Tensor2D;
  let b: tf.Tensor2D;
  let want: number[];
  beforeEach(async () => {
    await tf.setBackend('moelab-cpu');
    releasePooledStorage(2 * 2 ** 30);
    const r = rng(31);
    a = tf.tensor2d(randArray(r, n * n), [n, n]);
    b = tf.tensor2d(randArray(r, n * n), [n, n]);
    const y = tf.matMul(a, b);
    want = Array.from(y.dataSync());
    y.dispose();
    releasePooledStorage();
  });

  it('a disposed output is the next same-size output, overwritten with the right values', () => {
    const y1 = tf.matMul(a, b);
    const buf = storage(y1);
    y1.dispose();
    expect(pooledStorageBytes()).toBe(n * n * 4);
    const y2 = tf.matMul(b, a);
    expect(storage(y2)).toBe(buf);
    expect(pooledStorageBytes()).toBe(0);
    const y3 = tf.matMul(a, b); // pool empty again: a new buffer
    expect(storage(y3)).not.toBe(buf);
    expect(Array.from(y3.dataSync())).toEqual(want);
    tf.dispose([y2, y3, a, b]);
  });

  it('never reuses a buffer that was read out, viewed by a slice, or is still shared by a reshape', () => {
    // Read out: the caller's array keeps its values after the tensor is gone.
    const y1 = tf.matMul(a, b);
    const read = y1.dataSync();
    y1.dispose();
    const other = tf.matMul(b, a);
    expect(storage(other)).not.toBe(read);
    expect(Array.from(read)).toEqual(want);
    other.dispose();

    // A contiguous slice is a view of the same buffer (cpu's Slice): it must outlive the source.
    releasePooledStorage();
    const y2 = tf.matMul(a, b);
    const view = tf.slice(y2, [0, 0], [n / 2, n]);
    y2.dispose();
    expect(pooledStorageBytes()).toBe(0);
    const y3 = tf.matMul(b, a);
    expect(Array.from(view.dataSync())).toEqual(want.slice(0, (n / 2) * n));
    tf.dispose([view, y3]);

    // A reshape shares the data id: disposing the original frees nothing until the reshape goes.
    releasePooledStorage();
    const y4 = tf.matMul(a, b);
    const buf = storage(y4);
    const flat = tf.reshape(y4, [n * n]);
    y4.dispose();
    expect(pooledStorageBytes()).toBe(0);
    const y5 = tf.matMul(b, a);
    expect(storage(y5)).not.toBe(buf);
    expect(Array.from(flat.dataSync())).toEqual(want);
    flat.dispose(); // read out above: still not pooled
    expect(pooledStorageBytes()).toBe(0);
    tf.dispose([y5, a, b]);
  });

  it('keeps within its cap, dropping the least recently pooled sizes; cap 0 turns it off', () => {
    const big = tf.zeros([2 * n, n]);
    const y1 = tf.matMul(a, b); // 64 KiB
    const y2 = tf.matMul(big, b); // 128 KiB
    releasePooledStorage(160 * 1024);
    y1.dispose();
    y2.dispose(); // does not fit beside y1's: y1's size is dropped
    expect(pooledStorageBytes()).toBe(2 * n * n * 4);
    const y3 = tf.matMul(a, b);
    expect(pooledStorageBytes()).toBe(2 * n * n * 4);
    releasePooledStorage(0);
    y3.dispose();
    expect(pooledStorageBytes()).toBe(0);
    tf.dispose([big, a, b]);
  });

  it('training-shaped loop: results equal a run without the pool, and the pool stays bounded', () => {
    const r = rng(32);
    const w = tf.variable(tf.tensor2d(randArray(r, n * n, 0.1), [n, n]));
    const x = tf.tensor2d(randArray(r, 4 * n * n), [4 * n, n]);
    const run = () => {
      const losses: number[] = [];
      const w0 = tf.tidy(() => tf.clone(w));
      for (let i = 0; i < 5; i++) {
        const { value, grads } = tf.variableGrads(() => tf.mean(tf.square(tf.relu(tf.matMul(tf.matMul(x, w), w)))), [w]);
        losses.push(value.dataSync()[0]!);
        tf.tidy(() => w.assign(tf.sub(w, tf.mul(grads[w.name]!, 0.1))));
        tf.dispose([value, grads[w.name]!]);
      }
      w.assign(w0);
      w0.dispose();
      return losses;
    };
    releasePooledStorage(0);
    const plain = run();
    releasePooledStorage(2 * 2 ** 30);
    const pooled = run();
    expect(pooled).toEqual(plain);
    expect(pooledStorageBytes()).toBeGreaterThan(0);
    expect(pooledStorageBytes()).toBeLessThan(64 * n * n * 4);
    tf.dispose([w, x, a, b]);
  });
});
