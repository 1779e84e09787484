/**
 * Every kernel moelab-wasm runs in WebAssembly equals the cpu backend, forward and gradients: this
 * file runs kernels-cpu's own kernel suites (the same random shapes and tolerances) with the name
 * `moelab-cpu` mapped to `moelab-wasm`, on the threaded build with 2 threads (Node always has
 * shared memory), so that the pool's splits are exercised on any machine. Skips, with the reason,
 * when the module is not built.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { registerMoelabWasmBackend } from './index.js';
import { loadWasmKernels } from './module.js';

const wasm = await registerMoelabWasmBackend(tf, { threads: 2 });

describe('moelab-wasm availability', () => {
  it('implements every function of the Node addon (kernels-cpu may grow new ones: each needs its export here)', async () => {
    const { loadNative } = await import('../../kernels-cpu/src/native.js');
    const native = loadNative();
    const { kernels } = await loadWasmKernels({ threads: 2 });
    if (!native.addon || !kernels) return; // one of the two is not built: the suites below say which
    const missing = Object.keys(native.addon).filter((name) => !(name in kernels.addon));
    expect(missing).toEqual([]);
  });

  it('reports what runs, or why not and how to build', () => {
    if (wasm.available) {
      // The threaded build, or the single-threaded one with the reason why.
      if (wasm.build === 'threads') expect([wasm.threads, wasm.reason]).toEqual([2, expect.stringContaining('2 threads on Workers sharing the memory')]);
      else expect([wasm.threads, wasm.reason]).toEqual([1, expect.stringContaining('single-threaded: ')]);
      for (const k of ['BatchMatMul', '_FusedMatMul', 'MoelabMoeMLP', 'MoelabMoeGLU', 'Softmax', 'TopK', 'MoelabAdamW']) expect(wasm.kernels).toContain(k);
    } else {
      expect(wasm.reason).toMatch(/emscripten/i);
    }
  });
});

if (wasm.available) {
  // kernels-cpu's helpers read this before registering (see its src/testing/helpers.ts).
  (globalThis as { __moelabKernelsUnderTest?: unknown }).__moelabKernelsUnderTest = {
    name: 'moelab-wasm',
    status: { available: true, reason: wasm.reason, blas: 'builtin', threads: wasm.threads, mallocTuned: false },
  };
  // The suites name their backend `moelab-cpu`: run them on moelab-wasm instead.
  const engine = tf.engine();
  const mapName = (name: string) => (name === 'moelab-cpu' ? 'moelab-wasm' : name);
  const setBackend = engine.setBackend.bind(engine);
  engine.setBackend = (name: string) => setBackend(mapName(name));
  const findFactory = engine.findBackendFactory.bind(engine);
  engine.findBackendFactory = (name: string) => findFactory(mapName(name));
  await import('../../kernels-cpu/src/kernels.test.js');
  await import('../../kernels-cpu/src/kernels/router.test.js');
  await import('../../kernels-cpu/src/kernels/moe.test.js');
  await import('../../kernels-cpu/src/kernels/moe-glu.test.js');
  await import('../../kernels-cpu/src/kernels/moe-packed.test.js');
  await import('../../kernels-cpu/src/kernels/attention.test.js');
  await import('../../kernels-cpu/src/kernels/norm.test.js');
  await import('../../kernels-cpu/src/kernels/decode.test.js');
} else {
  describe.skip(`moelab-wasm kernels equal cpu (${wasm.reason})`, () => {
    it('needs the built module', () => {});
  });
}
