/**
 * @moelab/kernels-wasm: moelab's native kernels (kernels-cpu's C++: packed SIMD GEMM, fused MoE
 * experts forward/backward, softmax, top-k, fused attention and RoPE, LayerNorm, AdamW,
 * reductions) compiled to WebAssembly, as the tfjs backend `moelab-wasm`. Works wherever
 * WebAssembly SIMD does (Node >= 20, current browsers); needs no compiler at install.
 *
 *   import * as tf from '@tensorflow/tfjs';
 *   import { registerMoelabWasmBackend } from '@moelab/kernels-wasm';
 *   const s = await registerMoelabWasmBackend(tf);
 *   if (s.available) await tf.setBackend('moelab-wasm'); else console.warn(s.reason);
 */
import * as tfjs from '@tensorflow/tfjs';
import { BACKEND_NAME, MoelabWasmBackend, registerBackend, wasmKernelNames } from './backend.js';
import { type LoadOptions, loadWasmKernels, MAX_MEMORY_BYTES, threadsUnavailableReason } from './module.js';

export { BACKEND_NAME, MAX_MEMORY_BYTES, MoelabWasmBackend, threadsUnavailableReason };

/** What registerMoelabWasmBackend found. */
export interface MoelabWasmStatus {
  /** True when the module loaded and the `moelab-wasm` backend is registered. */
  available: boolean;
  /** One line: what runs (the build and its threads, or why it is single-threaded), or why nothing does and how to fix it. */
  reason: string;
  /** Threads the kernels use (1 for the single-threaded build; 0 when unavailable). */
  threads: number;
  /** Which build runs: `threads` (pthreads on Workers sharing the memory) or `single`. */
  build: 'threads' | 'single';
  /** The kernels that run in WebAssembly (the others are tfjs-backend-cpu's JavaScript kernels). */
  kernels: string[];
}

export interface RegisterOptions extends LoadOptions {
  /** tfjs backend priority (cpu is 1, wasm and webgl 2, moelab-cpu 2.5). Default 2.2: above tfjs's wasm, below moelab-cpu. */
  priority?: number;
}

/**
 * Loads the WebAssembly module and registers the `moelab-wasm` backend with its kernels
 * (idempotent: the first call's module and threads stay). The threaded build runs where shared
 * memory is (Node; a cross-origin isolated page) with one thread per core (or `options.threads`),
 * the single-threaded build elsewhere, and `reason` says which and why. Resolves `available:
 * false` with the reason, registering nothing, when the module is missing. Does not switch
 * backends: call `tf.setBackend('moelab-wasm')` before building models.
 */
export async function registerMoelabWasmBackend(tf: typeof tfjs = tfjs, options: RegisterOptions = {}): Promise<MoelabWasmStatus> {
  const load = registered ?? (await loadWasmKernels(options));
  const { kernels, reason, build, singleReason } = load;
  if (!kernels) return { available: false, reason, threads: 0, build, kernels: [] };
  try {
    registerBackend(tf, kernels, options.priority ?? 2.2);
    registered = load;
  } catch (e) {
    return { available: false, reason: (e as Error).message, threads: 0, build, kernels: [] };
  }
  const threads = kernels.addon.info().threads;
  const how = build === 'threads' ? `${threads} threads on Workers sharing the memory` : `single-threaded: ${singleReason}`;
  return {
    available: true,
    reason: `WebAssembly SIMD128 kernels (packed GEMM, fused MoE ops; ${how})`,
    threads,
    build,
    kernels: wasmKernelNames(tf, kernels),
  };
}

let registered: Awaited<ReturnType<typeof loadWasmKernels>> | undefined;

/**
 * Plugin-style descriptor, for hosts that list backend providers: what it provides and how to
 * register it.
 */
export const moelabWasmPlugin = {
  name: '@moelab/kernels-wasm',
  kind: 'backend' as const,
  backend: BACKEND_NAME,
  description: "kernels-cpu's C++ kernels compiled to WebAssembly SIMD128: packed GEMM, fused MoE expert ops, attention, norms, AdamW",
  register: (tf?: typeof tfjs, options?: RegisterOptions): Promise<MoelabWasmStatus> => registerMoelabWasmBackend(tf, options),
};
