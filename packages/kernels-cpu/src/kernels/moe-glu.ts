/**
 * The fused gated (GLU) MoE experts of the kernel contract (@moelab/core/kernels: MOE_GLU_KERNEL
 * and MOE_GLU_GRAD_KERNEL) for the moelab-cpu backend, and their gradient:
 *
 *   out[t] = sum_{n: tokenIndex[n] = t} weight[n] * (act(x[t] W1[e_n]) * (x[t] W3[e_n])) W2[e_n]
 *
 * (SwiGLU with silu, GeGLU with gelu, ReGLU with relu; Shazeer 2020, arXiv:2002.05202.)
 *
 * moelab-cpu's `hidden` output holds each assignment's two pre-activations [x W1 | x W3] in its own
 * order, kept only for the backward kernel (saved through `outputsToSave`).
 */
import { MOE_GLU_GRAD_KERNEL, MOE_GLU_KERNEL } from '@moelab/core/kernels';
import type { NativeAddon } from '../native.js';
import type { KernelConfig, Tf } from './helpers.js';
import { makeExpertKernels, registerExpertGradient } from './moe.js';

const GATED: readonly ['w1', 'w3', 'w2'] = ['w1', 'w3', 'w2'];

export function makeMoeGluKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  return makeExpertKernels(backendName, {
    kernel: MOE_GLU_KERNEL,
    gradKernel: MOE_GLU_GRAD_KERNEL,
    weights: GATED,
    forward: native.moeGluForward,
    backward: native.moeGluBackward,
  });
}

/** The gradient of `MoelabMoeGLU`, registered once for every backend (see registerExpertGradient). */
export function registerMoeGluGradient(tf: Tf): void {
  registerExpertGradient(tf, MOE_GLU_KERNEL, MOE_GLU_GRAD_KERNEL, GATED);
}
