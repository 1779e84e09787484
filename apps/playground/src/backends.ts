/**
 * Browser backends for core's resolveBackend: moelab-wasm (moelab's own kernels in WebAssembly,
 * threaded on a cross-origin isolated page: the default) > WebGPU > WebGL > tfjs's WebAssembly >
 * plain JS (`cpu`, always registered by core). Each loads its tfjs package lazily, so a backend that is not chosen costs nothing.
 * The wasm binaries are emitted by Vite as assets; core patches the wasm engine once it is chosen.
 */
import { registerBackendCandidate, tf } from '@moelab/core';

export const BACKEND_CHOICES = ['auto', 'moelab-wasm', 'webgpu', 'webgl', 'wasm', 'cpu'] as const;

let registered = false;
let allowSoftwareWebGL = false;

/** Under `auto`, software WebGL is skipped (slower than wasm); asking for `webgl` by name allows it. */
export function setAllowSoftwareWebGL(allow: boolean): void {
  allowSoftwareWebGL = allow;
}

export function registerBrowserBackends(): void {
  if (registered) return;
  registered = true;
  registerBackendCandidate({
    name: 'moelab-wasm',
    priority: 40,
    hint: 'needs WebAssembly SIMD; its threads need a cross-origin isolated page (COOP/COEP headers)',
    async load() {
      if (typeof WebAssembly === 'undefined') return { ok: false, reason: 'WebAssembly is missing' };
      const { registerMoelabWasmBackend } = await import('@moelab/kernels-wasm');
      const status = await registerMoelabWasmBackend(tf);
      if (!status.available) return { ok: false, reason: status.reason };
      const bad = await readBackCheck('moelab-wasm');
      if (bad) return { ok: false, reason: bad };
      return { ok: true, reason: status.reason };
    },
  });
  registerBackendCandidate({
    name: 'webgpu',
    priority: 30,
    hint: 'needs a browser with WebGPU enabled and a GPU adapter',
    async load() {
      const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
      if (!gpu) return { ok: false, reason: 'navigator.gpu is missing (WebGPU not supported here)' };
      const adapter = await gpu.requestAdapter();
      if (!adapter) return { ok: false, reason: 'no WebGPU adapter' };
      await import('@tensorflow/tfjs-backend-webgpu');
      const bad = await readBackCheck('webgpu');
      if (bad) return { ok: false, reason: bad };
      return { ok: true, reason: 'WebGPU compute shaders' };
    },
  });
  registerBackendCandidate({
    name: 'webgl',
    priority: 20,
    hint: 'needs WebGL2 (OffscreenCanvas in a worker)',
    async load() {
      if (typeof OffscreenCanvas === 'undefined') return { ok: false, reason: 'OffscreenCanvas is missing' };
      const gl = new OffscreenCanvas(1, 1).getContext('webgl2');
      if (!gl) return { ok: false, reason: 'no WebGL2 context (GPU disabled?)' };
      // Software rasterisers (SwiftShader) are slower than wasm: skip them under auto.
      const dbg = gl.getExtension('WEBGL_debug_renderer_info');
      const renderer = dbg ? String(gl.getParameter(dbg.UNMASKED_RENDERER_WEBGL)) : '';
      if (!allowSoftwareWebGL && /swiftshader|llvmpipe|software/i.test(renderer)) return { ok: false, reason: `software WebGL (${renderer})` };
      const bad = await readBackCheck('webgl');
      if (bad) return { ok: false, reason: bad };
      return { ok: true, reason: `WebGL2 shaders${renderer ? ` on ${renderer}` : ''}` };
    },
  });
  registerBackendCandidate({
    name: 'wasm',
    priority: 10,
    async load() {
      if (typeof WebAssembly === 'undefined') return { ok: false, reason: 'WebAssembly is missing' };
      const [wasm, plain, simd, threaded] = await Promise.all([
        import('@tensorflow/tfjs-backend-wasm'),
        import('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm?url'),
        import('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm?url'),
        import('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm?url'),
      ]);
      wasm.setWasmPaths({
        'tfjs-backend-wasm.wasm': plain.default,
        'tfjs-backend-wasm-simd.wasm': simd.default,
        'tfjs-backend-wasm-threaded-simd.wasm': threaded.default,
      });
      return { ok: true, reason: 'WebAssembly kernels (SIMD when the browser has it)' };
    },
  });
}

/**
 * Make `name` the tfjs backend and check that synchronous read-back (the trainer reads losses and
 * routing decisions with dataSync) returns correct numbers; some GPU paths return zeros.
 */
async function readBackCheck(name: string): Promise<string | undefined> {
  const previous = tf.getBackend();
  try {
    if (!(await tf.setBackend(name))) return 'tfjs could not initialise it';
    const got = tf.tidy(() => Array.from(tf.matMul(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor2d([5, 6], [2, 1])).dataSync()));
    if (got[0] !== 17 || got[1] !== 39) return `synchronous read-back gave wrong values ([${got.join(', ')}] instead of [17, 39])`;
    return undefined;
  } catch (e) {
    return `self-test failed: ${(e as Error).message.split('\n')[0]}`;
  } finally {
    if (previous && previous !== name) await tf.setBackend(previous);
  }
}

export function currentBackend(): string {
  return tf.getBackend();
}
