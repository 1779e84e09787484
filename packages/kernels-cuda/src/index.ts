/**
 * @moelab/kernels-cuda: a CUDA backend for TensorFlow.js in Node (`moelab-cuda`), and the same
 * backend on a CPU emulation of the CUDA launch grid (`moelab-cuda-emu`) for machines without a GPU.
 *
 *   import * as tf from '@tensorflow/tfjs';
 *   import { registerMoelabCudaBackend } from '@moelab/kernels-cuda';
 *   const s = registerMoelabCudaBackend(tf);
 *   if (s.available) await tf.setBackend(s.backend); else console.warn(s.reason);
 */
import {
  type MoelabCudaStatus,
  type RegisterOptions,
  BACKEND_NAME,
  CUDA_KERNELS,
  EMULATION_BACKEND_NAME,
  deviceMemory,
  registerMoelabCudaBackend,
} from './register.js';

export { BACKEND_NAME, CUDA_KERNELS, EMULATION_BACKEND_NAME, deviceMemory, registerMoelabCudaBackend };
export type { MoelabCudaStatus, RegisterOptions };
export { fallbackCounts, resetFallbackCounts } from './backend.js';
export { HOW_TO_BUILD } from './native.js';

/** Plugin-style descriptor, for hosts that list backend providers. */
export const moelabCudaPlugin = {
  name: '@moelab/kernels-cuda',
  kind: 'backend' as const,
  backend: BACKEND_NAME,
  description: 'CUDA kernels (tiled FP32 / TF32 GEMM, fused MoE expert ops, norms, AdamW) with device-resident tensors; host fallback for the rest',
  register: (tf?: Parameters<typeof registerMoelabCudaBackend>[0], options?: RegisterOptions): MoelabCudaStatus => registerMoelabCudaBackend(tf, options),
};
