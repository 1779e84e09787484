/**
 * Node backends, detected at run time (none is a hard dependency):
 *  - `tensorflow`: @tensorflow/tfjs-node-gpu, else @tensorflow/tfjs-node, when the user installed one
 *    (`pnpm add @tensorflow/tfjs-node-gpu`; its installer downloads libtensorflow, so we never list it).
 *  - `moelab-cuda`: moelab's CUDA kernels (@moelab/kernels-cuda, an optional peer dependency), when
 *    its device addon built (nvcc at install) and an NVIDIA GPU (sm_80+) answers; `moelab-cuda-emu`
 *    is the same backend on a CPU emulation of the launch grid (named explicitly only, never `auto`).
 *  - `moelab-cpu`: moelab's native CPU kernels (@moelab/kernels-cpu), when its addon built.
 *  - `moelab-wasm`: the same kernels compiled to WebAssembly (@moelab/kernels-wasm): needs no
 *    compiler, so `auto` takes it when the native addon is missing.
 *  - `wasm`: tfjs's WebAssembly backend (single-threaded in Node).
 *  - `cpu`: plain JavaScript (always there).
 */
import { type BackendChoice, registerBackendCandidate, resolveBackend, tf } from '@moelab/core';

let registered = false;

async function tryImport(name: string): Promise<unknown> {
  // A variable specifier keeps bundlers and TypeScript from resolving optional packages at build time.
  const spec = name;
  return import(spec);
}

export function registerNodeBackends(): void {
  if (registered) return;
  registered = true;
  registerBackendCandidate({
    name: 'tensorflow',
    priority: 100,
    hint: 'Install it with `pnpm add @tensorflow/tfjs-node-gpu` (CUDA) or `pnpm add @tensorflow/tfjs-node` (CPU).',
    load: async () => {
      for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
        try {
          await tryImport(pkg);
          return { ok: true, reason: `${pkg} (libtensorflow)` };
        } catch {
          /* not installed: try the next */
        }
      }
      return { ok: false, reason: 'neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed' };
    },
  });
  for (const emulate of [false, true]) {
    registerBackendCandidate({
      name: emulate ? 'moelab-cuda-emu' : 'moelab-cuda',
      // The emulation is for kernel tests and debugging: below cpu, so `auto` never reaches it.
      priority: emulate ? -10 : 75,
      hint: 'It needs @moelab/kernels-cuda installed on a machine with the CUDA toolkit (nvcc) at install time and an NVIDIA GPU of compute capability 8.0 or newer',
      load: async () => {
        let mod: { registerMoelabCudaBackend?: (tfjs?: unknown, options?: { emulate?: boolean }) => { available: boolean; reason: string } };
        try {
          mod = (await tryImport('@moelab/kernels-cuda')) as typeof mod;
        } catch {
          return { ok: false, reason: '@moelab/kernels-cuda is not installed (`pnpm add @moelab/kernels-cuda` or `npm install @moelab/kernels-cuda`)' };
        }
        if (!mod.registerMoelabCudaBackend) return { ok: false, reason: '@moelab/kernels-cuda has no registerMoelabCudaBackend export' };
        const r = mod.registerMoelabCudaBackend(tf, { emulate });
        return { ok: r.available, reason: r.reason };
      },
    });
  }
  registerBackendCandidate({
    name: 'moelab-cpu',
    priority: 50,
    load: async () => {
      let mod: { registerMoelabCpuBackend?: (tfjs?: unknown) => { available: boolean; reason: string; blas?: string; threads?: number } };
      try {
        mod = (await tryImport('@moelab/kernels-cpu')) as typeof mod;
      } catch {
        return { ok: false, reason: '@moelab/kernels-cpu is not installed (`pnpm add @moelab/kernels-cpu` or `npm install @moelab/kernels-cpu`)' };
      }
      if (!mod.registerMoelabCpuBackend) return { ok: false, reason: '@moelab/kernels-cpu has no registerMoelabCpuBackend export' };
      // Register on moelab's own tfjs instance. The backend brings its own native UnsortedSegmentSum
      // (O(N), like core's engine fix), so nothing else is patched. When the addon did not build,
      // `reason` says why and exactly what to do (approve the blocked install script, or install the
      // toolchain, then rebuild); `auto` prints it among the backends it skipped.
      const r = mod.registerMoelabCpuBackend(tf);
      return { ok: r.available, reason: r.reason };
    },
  });
  registerBackendCandidate({
    name: 'moelab-wasm',
    priority: 30,
    load: async () => {
      let mod: { registerMoelabWasmBackend?: (tfjs?: unknown) => Promise<{ available: boolean; reason: string }> };
      try {
        mod = (await tryImport('@moelab/kernels-wasm')) as typeof mod;
      } catch {
        return { ok: false, reason: '@moelab/kernels-wasm is not installed (`pnpm add @moelab/kernels-wasm` or `npm install @moelab/kernels-wasm`)' };
      }
      if (!mod.registerMoelabWasmBackend) return { ok: false, reason: '@moelab/kernels-wasm has no registerMoelabWasmBackend export' };
      const r = await mod.registerMoelabWasmBackend(tf);
      return { ok: r.available, reason: r.reason };
    },
  });
  registerBackendCandidate({
    name: 'wasm',
    priority: 20,
    load: async () => {
      try {
        await tryImport('@tensorflow/tfjs-backend-wasm');
        return { ok: true, reason: 'WebAssembly kernels (single-threaded in Node)' };
      } catch (e) {
        return { ok: false, reason: `@tensorflow/tfjs-backend-wasm could not be loaded (${(e as Error).message})` };
      }
    },
  });
}

/**
 * One line naming the kernels that ran on the host instead of the device since the backend was
 * chosen (moelab-cuda's fallback counts, most frequent first), or null on other backends or when
 * none fell back.
 */
export async function fallbackReport(): Promise<string | null> {
  const name = tf.getBackend();
  if (name !== 'moelab-cuda' && name !== 'moelab-cuda-emu') return null;
  const mod = (await tryImport('@moelab/kernels-cuda')) as { fallbackCounts(backend: string): Record<string, number> };
  const counts = Object.entries(mod.fallbackCounts(name));
  if (counts.length === 0) return null;
  return `${name}: ${counts.length} kernel${counts.length === 1 ? '' : 's'} ran on the host (no CUDA version yet): ${counts.map(([k, n]) => `${k} x${n}`).join(', ')}`;
}

/** Pick the backend (`auto` or a name) before any model is built. */
export async function chooseBackend(request = 'auto'): Promise<BackendChoice> {
  registerNodeBackends();
  return resolveBackend(request);
}
