import { describe, expect, it } from 'vitest';
import { backendCandidates, Rng, tf } from '@moelab/core';
import { registerMoelabCpuBackend } from '@moelab/kernels-cpu';
import { registerMoelabWasmBackend } from '@moelab/kernels-wasm';
import { chooseBackend, fallbackReport } from './backends.js';

function bmmCases(): { a: number[]; b: number[]; ta: boolean; tb: boolean }[] {
  return [
    { a: [3, 4, 5], b: [3, 5, 2], ta: false, tb: false },
    { a: [2, 3, 5, 4], b: [2, 3, 5, 6], ta: true, tb: false },
    { a: [4, 2, 7], b: [4, 3, 7], ta: false, tb: true },
    { a: [1, 3, 4], b: [5, 2, 4], ta: false, tb: true },
    { a: [6, 4], b: [5, 4], ta: false, tb: true },
  ];
}

function compute(backend: string): Float32Array[] {
  return bmmCases().map(({ a, b, ta, tb }, i) => {
    const rng = new Rng(i);
    const A = tf.tensor(rng.normalArray(a.reduce((x, y) => x * y)), a);
    const B = tf.tensor(rng.normalArray(b.reduce((x, y) => x * y)), b);
    const out = tf.matMul(A, B, ta, tb).dataSync() as Float32Array;
    void backend;
    // tfjs's own BatchMatMul gradient does not support broadcast batch dims: forward only there.
    if (a.slice(0, -2).join() !== b.slice(0, -2).join()) return out;
    const [ga, gb] = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.square(tf.matMul(x, y, ta, tb))))([A, B]);
    return Float32Array.from([...out, ...ga!.dataSync(), ...gb!.dataSync()]);
  });
}

describe('backends', () => {
  it('auto picks the best available backend and says why', async () => {
    const c = await chooseBackend('auto');
    expect(['tensorflow', 'moelab-cuda', 'moelab-cpu', 'moelab-wasm', 'wasm', 'cpu']).toContain(c.name);
    expect(c.reason.length).toBeGreaterThan(10);
  });

  it('auto picks moelab-cpu when its addon loaded, and otherwise says why and how to get it', async () => {
    const native = registerMoelabCpuBackend(tf);
    const c = await chooseBackend('auto');
    if (c.name === 'moelab-cuda') expect(c.tried.find((t) => t.name === 'moelab-cuda')?.ok).toBe(true);
    else if (native.available) {
      expect(c.name).toBe('moelab-cpu');
      expect(c.reason).toMatch(/native kernels \((OpenBLAS|builtin packed) GEMM, \d+ threads?(, malloc tuned)?\)/);
      expect(tf.getBackend()).toBe('moelab-cpu');
    } else {
      expect(c.name).not.toBe('moelab-cpu');
      expect(c.reason).toMatch(/moelab-cpu: the native addon .*pnpm rebuild @moelab\/kernels-cpu/);
    }
    await chooseBackend('cpu');
  });

  it('moelab-wasm: ranks between moelab-cpu and tfjs wasm under auto, and runs by name (values equal cpu)', async () => {
    await chooseBackend('cpu'); // registers the Node candidates
    const order = backendCandidates().map((c) => c.name);
    expect(order.indexOf('moelab-wasm')).toBeGreaterThan(order.indexOf('moelab-cpu'));
    expect(order.indexOf('moelab-wasm')).toBeLessThan(order.indexOf('wasm'));
    const wasm = await registerMoelabWasmBackend(tf);
    if (!wasm.available) {
      await expect(chooseBackend('moelab-wasm')).rejects.toThrow(/backend "moelab-wasm" is not available: the WebAssembly module was not built/);
      return;
    }
    await chooseBackend('cpu');
    const ref = compute('cpu');
    const choice = await chooseBackend('moelab-wasm');
    expect(choice.reason).toMatch(/WebAssembly SIMD128 kernels/);
    expect(tf.getBackend()).toBe('moelab-wasm');
    const got = compute('moelab-wasm');
    for (const [i, g] of got.entries()) {
      for (const [j, v] of g.entries()) expect(Math.abs(v - ref[i]![j]!)).toBeLessThan(1e-4 * (1 + Math.abs(ref[i]![j]!)));
    }
    await chooseBackend('cpu');
  });

  it('an unavailable named backend fails with the reason and how to get it', async () => {
    await expect(chooseBackend('tensorflow')).rejects.toThrow(
      /backend "tensorflow" is not available: neither @tensorflow\/tfjs-node-gpu nor @tensorflow\/tfjs-node is installed\. Install it with/,
    );
  });

  it('wasm: the batched/transposed BatchMatMul fix equals the cpu backend (values and gradients)', async () => {
    await chooseBackend('cpu');
    const ref = compute('cpu');
    const choice = await chooseBackend('wasm');
    expect(choice.name).toBe('wasm');
    const got = compute('wasm');
    for (let i = 0; i < ref.length; i++) {
      expect(got[i]!.length).toBe(ref[i]!.length);
      for (let j = 0; j < ref[i]!.length; j++) expect(got[i]![j]).toBeCloseTo(ref[i]![j]!, 3);
    }
    // Row gathers (moelab's wasm fast path) with repeats, 3-D params, 2-D indices, int32 data.
    const table = tf.tensor3d(
      Array.from({ length: 24 }, (_, i) => i * 0.5),
      [4, 3, 2],
    );
    const gi = tf.tensor2d([3, 0, 3, 1], [2, 2], 'int32');
    const gathered = tf.gather(table, gi);
    expect(gathered.shape).toEqual([2, 2, 3, 2]);
    expect(Array.from(gathered.dataSync()).slice(0, 6)).toEqual([9, 9.5, 10, 10.5, 11, 11.5]);
    expect(Array.from(tf.gather(tf.tensor1d([5, 6, 7], 'int32'), tf.tensor1d([2, 2, 0], 'int32')).dataSync())).toEqual([7, 7, 5]);
    expect(Array.from(tf.gather(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor1d([1], 'int32'), 1).dataSync())).toEqual([2, 4]);
    // wasm has no UnsortedSegmentSum of its own: moelab's must be there, with its gradient.
    const x = tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]);
    const ids = tf.tensor1d([2, 0, 2], 'int32');
    expect(Array.from(tf.unsortedSegmentSum(x, ids, 3).dataSync())).toEqual([3, 4, 0, 0, 6, 8]);
    const g = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(tf.unsortedSegmentSum(v, ids, 3), tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]))))(x);
    expect(Array.from(g.dataSync())).toEqual([5, 6, 1, 2, 5, 6]);
    await chooseBackend('cpu');
  });
});

describe('moelab-cuda', () => {
  it('auto tries moelab-cuda first among moelab backends and says why it was skipped when no GPU answers', async () => {
    const c = await chooseBackend('auto');
    const cuda = c.tried.find((t) => t.name === 'moelab-cuda');
    expect(cuda).toBeDefined();
    if (!cuda!.ok) {
      expect(c.reason).toContain(`moelab-cuda: ${cuda!.reason}`);
      expect(cuda!.reason.length).toBeGreaterThan(10);
    } else expect(c.name).toBe('moelab-cuda');
    await chooseBackend('cpu');
  });

  it('moelab-cuda-emu runs when named and reports the kernels that fell back to the host', async () => {
    const c = await chooseBackend('moelab-cuda-emu').catch((e: Error) => ({ name: 'unavailable', reason: e.message, tried: [] }));
    if (c.name === 'unavailable') {
      expect(c.reason).toMatch(/moelab-cuda-emu/);
      return;
    }
    const { resetFallbackCounts } = await import('@moelab/kernels-cuda');
    resetFallbackCounts('moelab-cuda-emu');
    const y = tf.tidy(() => tf.atan2(tf.tensor1d([1, 0, -1]).mul(2), tf.ones([3])).dataSync());
    expect(Array.from(y)).toEqual(Array.from(new Float32Array([Math.atan2(2, 1), 0, Math.atan2(-2, 1)])));
    expect(await fallbackReport()).toBe('moelab-cuda-emu: 1 kernel ran on the host (no CUDA version yet): Atan2 x1');
    expect(c.name).toBe('moelab-cuda-emu');
    await chooseBackend('cpu');
    expect(await fallbackReport()).toBeNull();
  });
});
