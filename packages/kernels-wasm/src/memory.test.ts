/**
 * moelab-wasm's storage: tensors in the module's memory survive its growth, reads are copies, a
 * tensor on a plain array moves into the memory when a native kernel first reads it, and running
 * out of memory is a one-line MoelabError naming the kernel and the size, after which the backend
 * keeps working.
 */
import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { MoelabError } from '@moelab/core';
import { randArray, rng } from '@moelab/kernels-cpu/testing/random';
import { ADOPT_MIN_ELEMENTS } from './backend.js';
import { type MoelabWasmBackend, registerMoelabWasmBackend } from './index.js';

const wasm = await registerMoelabWasmBackend(tf);

afterAll(async () => {
  await tf.setBackend('cpu');
});

/** n values uniform in [-0.5, 0.5), reproducible from the seed. */
const rand = (n: number, seed: number): Float32Array => randArray(rng(seed), n, 0.5);

describe.skipIf(!wasm.available)(`moelab-wasm memory (${wasm.reason})`, () => {
  it('an output larger than the 4 GiB address space is a one-line MoelabError naming the kernel and the size; the backend goes on', async () => {
    await tf.setBackend('moelab-wasm');
    const a = tf.ones([65536, 8]);
    const b = tf.ones([8, 32768]);
    let error: unknown;
    try {
      tf.matMul(a, b);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(MoelabError);
    const message = (error as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toMatch(/^moelab-wasm: out of memory: an output of BatchMatMul \(2147483648 float32 values\) needs 8192 MiB/);
    expect(message).toContain('at most 4096 MiB');
    // Still usable, and nothing leaked from the failed call.
    const before = tf.memory().numTensors;
    const c = tf.matMul(tf.ones([2, 8]), tf.ones([8, 3]));
    expect(Array.from(c.dataSync())).toEqual([8, 8, 8, 8, 8, 8]);
    c.dispose();
    expect(tf.memory().numTensors).toBe(before + 2); // the two ones() operands of the last call
    tf.dispose([a, b]);
  });

  it('a tensor on a plain array moves into the memory when a native kernel first reads it, and stays there', async () => {
    await tf.setBackend('moelab-wasm');
    const backend = tf.backend() as MoelabWasmBackend;
    const storage = (t: tf.Tensor) => backend.data.get(t.dataId) as unknown as { ptr: number; values: Float32Array };
    const values = rand(128 * 64, 3);
    const kept = values.slice();
    const x = tf.tensor(values, [128, 64]);
    const w = tf.tensor(rand(64 * 32, 4), [64, 32]);
    expect(w.size).toBeLessThan(ADOPT_MIN_ELEMENTS); // small: copied in per call instead
    expect(storage(x).ptr).toBe(0);
    expect(storage(x).values).toBe(values);
    const first = tf.matMul(x, w);
    expect(storage(x).ptr).toBeGreaterThan(0);
    expect(storage(x).values).not.toBe(values);
    expect(storage(w).ptr).toBe(0);
    // Same numbers for the next native call, a JavaScript kernel (tfjs-backend-cpu's Cumsum) and a
    // read; the caller's array is left as it was.
    expect(Array.from(tf.matMul(x, w).dataSync())).toEqual(Array.from(first.dataSync()));
    expect(Array.from(x.dataSync())).toEqual(Array.from(kept));
    expect(Array.from(values)).toEqual(Array.from(kept));
    const sums = tf.cumsum(x, 1).dataSync();
    expect(sums[63]).toBeCloseTo(
      kept.slice(0, 64).reduce((a, b) => a + b, 0),
      4,
    );
    // Two tensors on one array, the later one disposed: the other still computes right (copied per call).
    const shared = rand(128 * 64, 5);
    const a = tf.tensor(shared, [128, 64]);
    tf.tensor(shared, [128, 64]).dispose();
    const viaShared = tf.matMul(a, w).dataSync();
    const copy = tf.matMul(tf.tensor(shared.slice(), [128, 64]), w).dataSync();
    expect(Array.from(viaShared)).toEqual(Array.from(copy));
    tf.dispose([x, w, first, a]);
  });

  it('tensors stay correct while the memory grows under them, and a read is a copy', async () => {
    await tf.setBackend('moelab-wasm');
    const backend = tf.backend() as MoelabWasmBackend;
    const x = tf.tensor(rand(256 * 64, 1), [256, 64]);
    const w = tf.tensor(rand(64 * 64, 2), [64, 64]);
    const first = tf.matMul(x, w); // in the module's memory
    const expected = Array.from(first.dataSync());
    const grownFrom = backend.heapBytes();
    // ~96 MiB of live outputs: the memory grows past its initial size several times.
    const big = Array.from({ length: 6 }, (_, i) => tf.matMul(tf.fill([2048, 64], i + 1), tf.ones([64, 2048])));
    expect(backend.heapBytes()).toBeGreaterThan(grownFrom);
    expect(Array.from(first.dataSync())).toEqual(expected);
    expect(big[5]!.dataSync()[12345]).toBe(6 * 64);
    // Reading hands out a copy: writing into it changes nothing.
    const read = first.dataSync();
    read[0] = 1e9;
    expect(first.dataSync()[0]).toBe(expected[0]);
    // The same product on cpu.
    await tf.setBackend('cpu');
    const ref = tf.matMul(tf.tensor(rand(256 * 64, 1), [256, 64]), tf.tensor(rand(64 * 64, 2), [64, 64]));
    const want = ref.dataSync();
    for (let i = 0; i < want.length; i++) expect(Math.abs(expected[i]! - want[i]!)).toBeLessThan(1e-4);
    await tf.setBackend('moelab-wasm');
    tf.dispose([x, w, first, ...big]);
  });
});
