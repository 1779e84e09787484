import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { moeLinear, moeMLP } from './index.js';
import { randArray, randInts, rng, status } from './testing/helpers.js';

afterAll(async () => {
  await tf.setBackend('cpu');
});

describe.skipIf(!status.available)(`no leaks over repeated calls (${status.reason})`, () => {
  it('tf.memory().numTensors and native memory (RSS) stay flat over many fwd+bwd steps', async () => {
    await tf.setBackend('moelab-cpu');
    const r = rng(42);
    // Wide rows, narrow experts: the native scratch per call (rows x d) is large while the compute
    // (rows x d x h) stays small, so a leak shows quickly in RSS without a long test.
    const T = 256;
    const d = 128;
    const h = 16;
    const E = 8;
    const k = 2;
    const x = tf.tensor2d(randArray(r, T * d), [T, d]);
    const w1 = tf.tensor3d(randArray(r, E * d * h), [E, d, h]);
    const w2 = tf.tensor3d(randArray(r, E * h * d), [E, h, d]);
    const tok = tf.tensor1d(
      Int32Array.from({ length: T * k }, (_, i) => Math.floor(i / k)),
      'int32',
    );
    const exp = tf.tensor1d(randInts(r, T * k, E), 'int32');
    const wt = tf.tensor1d(randArray(r, T * k));
    const step = () =>
      tf.tidy(() => {
        const g = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, u: tf.Tensor) => {
          const y = moeMLP(a as tf.Tensor2D, b as tf.Tensor3D, c as tf.Tensor3D, tok, exp, u as tf.Tensor1D, 'gelu');
          const z = moeLinear(y, w1 as tf.Tensor3D, tok, tok, exp, u as tf.Tensor1D, T);
          const p = tf.softmax(tf.matMul(z, z, false, true));
          return tf.sum(tf.mul(tf.gather(p, exp), tf.max(p)));
        })([x, w1, w2, wt]);
        // TopK has no gradient in stock tfjs: exercise it outside the tape.
        tf.topk(g[0], 4).indices.dataSync();
        tf.unsortedSegmentSum(g[0], exp.slice(0, T), E).dataSync();
        // Force the work to happen now (kernels are synchronous, but be explicit).
        for (const t of g) t.dataSync();
      });
    const gc = (globalThis as { gc?: () => void }).gc;
    for (let i = 0; i < 10; i++) step();
    gc?.();
    const tensors0 = tf.memory().numTensors;
    const rss0 = process.memoryUsage().rss;
    // Each step moves ~2 MB through native scratch buffers (gathered rows, expert outputs, their
    // gradients): a per-call native leak would add over 100 MB in 80 steps.
    for (let i = 0; i < 80; i++) step();
    gc?.();
    const grown = (process.memoryUsage().rss - rss0) / 2 ** 20;
    expect(tf.memory().numTensors).toBe(tensors0);
    expect(grown).toBeLessThan(48);
    tf.dispose([x, w1, w2, tok, exp, wt]);
  });
});

describe.skipIf(!status.available)(`thread pool under many short runs (${status.reason})`, () => {
  it('thousands of back-to-back parallel kernels of varying task counts finish with exact results', async () => {
    // A claim race in the pool once let a worker run a task of a finished run again, which pushed
    // the completion count past the task count and hung the caller. Short runs back to back, with
    // task counts changing from one run to the next, are what exposed it.
    await tf.setBackend('moelab-cpu');
    const r = rng(77);
    const xs = [
      [64, 1024],
      [300, 257],
      [2048, 64],
      [8, 8192],
    ].map(([a, b]) => tf.tensor2d(randArray(r, a! * b!), [a!, b!]));
    for (let i = 0; i < 4000; i++) {
      const x = xs[i % xs.length]!;
      const y = tf.tidy(() => tf.sum(tf.abs(tf.sub(tf.add(x, x), tf.mul(x, 2)))).dataSync()[0]);
      if (y !== 0) expect.fail(`run ${i}: expected 0, got ${y}`);
    }
    tf.dispose(xs);
  }, 60_000);
});
