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
import { loadWasmKernels, MAX_MEMORY_BYTES } from './module.js';

export { BACKEND_NAME, MAX_MEMORY_BYTES, MoelabWasmBackend };

/** What registerMoelabWasmBackend found. */
export interface MoelabWasmStatus {
  /** True when the module loaded and the `moelab-wasm` backend is registered. */
  available: boolean;
  /** One line: what runs, or why not and how to fix it. */
  reason: string;
  /** Threads the kernels use (1: this build is single-threaded; 0 when unavailable). */
  threads: number;
  /** The kernels that run in WebAssembly (the others are tfjs-backend-cpu's JavaScript kernels). */
  kernels: string[];
}

export interface RegisterOptions {
  /** tfjs backend priority (cpu is 1, wasm and webgl 2, moelab-cpu 2.5). Default 2.2: above tfjs's wasm, below moelab-cpu. */
  priority?: number;
}

/**
 * Loads the WebAssembly module and registers the `moelab-wasm` backend with its kernels
 * (idempotent). Resolves `available: false` with the reason, registering nothing, when the module
 * is missing. Does not switch backends: call `tf.setBackend('moelab-wasm')` before building models.
 */
export async function registerMoelabWasmBackend(tf: typeof tfjs = tfjs, options: RegisterOptions = {}): Promise<MoelabWasmStatus> {
  const { kernels, reason } = await loadWasmKernels();
  if (!kernels) return { available: false, reason, threads: 0, kernels: [] };
  try {
    registerBackend(tf, kernels, options.priority ?? 2.2);
  } catch (e) {
    return { available: false, reason: (e as Error).message, threads: 0, kernels: [] };
  }
  const threads = kernels.addon.info().threads;
  return {
    available: true,
    reason: `WebAssembly SIMD128 kernels (packed GEMM, fused MoE ops; ${threads} thread${threads === 1 ? '' : 's'})`,
    threads,
    kernels: wasmKernelNames(tf, kernels),
  };
}

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
