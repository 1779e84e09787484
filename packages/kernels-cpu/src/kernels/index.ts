/**
 * Every kernel moelab-cpu registers, by family. The overrides replace tfjs-backend-cpu's hot
 * kernels: each works on the backend's TypedArrays in place (no copies), writes only into a freshly
 * allocated output, and hands any input it does not handle (other dtypes, rare attributes) to the
 * stock cpu kernel, which runs unchanged because the backend *is* a MathBackendCPU. The fused
 * kernels implement core's kernel contract (@moelab/core/kernels); their gradients are registered
 * once, for every backend.
 */
import type { NativeAddon } from '../native.js';
import { makeAdamWKernel } from './adamw.js';
import { makeAttentionKernels, registerAttentionGradients } from './attention.js';
import { makeDecodeKernels } from './decode.js';
import { registerElementwise } from './elementwise.js';
import { type KernelConfig, overrides, type Tf } from './helpers.js';
import { registerIndexing } from './indexing.js';
import { registerLayout } from './layout.js';
import { registerMatmul } from './matmul.js';
import { makeMoeKernels, registerMoeGradients } from './moe.js';
import { makeMoeGluKernels, registerMoeGluGradient } from './moe-glu.js';
import { makeMoePackedKernels, registerMoePackedGradient } from './moe-packed.js';
import { makeNormKernels, registerNormGradients } from './norm.js';
import { registerReduce } from './reduce.js';
import { makeRouterKernels, registerRouterGradients } from './router.js';
import { registerSoftmax } from './softmax.js';

/** The kernel configs of every native kernel, for `backendName`. */
export function nativeKernels(tf: Tf, native: NativeAddon, backendName: string): KernelConfig[] {
  const configs: KernelConfig[] = [];
  const o = overrides(tf, native, backendName, configs);
  for (const family of [registerMatmul, registerLayout, registerElementwise, registerReduce, registerIndexing, registerSoftmax]) family(o);
  configs.push(
    ...makeMoeKernels(native, backendName),
    ...makeMoeGluKernels(native, backendName),
    ...makeMoePackedKernels(native, backendName),
    ...makeAttentionKernels(native, backendName),
    ...makeDecodeKernels(native, backendName),
    makeAdamWKernel(native, backendName),
    ...makeNormKernels(native, backendName),
    ...makeRouterKernels(native, backendName),
  );
  return configs;
}

/** Gradients of the fused kernels (once per tfjs instance: they hold for every backend that has the kernels). */
export function registerFusedGradients(tf: Tf): void {
  registerMoeGradients(tf);
  registerMoeGluGradient(tf);
  registerMoePackedGradient(tf);
  registerAttentionGradients(tf);
  registerNormGradients(tf);
  registerRouterGradients(tf);
}
