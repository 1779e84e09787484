/**
 * @moelab/kernels-cpu: native CPU kernels for TensorFlow.js in Node.
 *
 *   import * as tf from '@tensorflow/tfjs';
 *   import { registerMoelabCpuBackend } from '@moelab/kernels-cpu';
 *   const s = registerMoelabCpuBackend(tf);
 *   if (s.available) await tf.setBackend('moelab-cpu'); else console.warn(s.reason);
 */
import * as tfjs from '@tensorflow/tfjs';
import { BACKEND_NAME, type MoelabCpuStatus, NATIVE_KERNELS, type RegisterOptions, registerMoelabCpuBackend, setGemm, setThreads } from './backend.js';
import {
  MOE_GLU_KERNEL,
  MOE_LINEAR_KERNEL,
  MOE_MLP_KERNEL,
  type MoeActivation,
  type MoeGluAttrs,
  type MoeLinearAttrs,
  type MoeMlpAttrs,
} from '@moelab/core/kernels';

// Kernel names, attributes and codes are core's kernel contract: import them from @moelab/core/kernels.
export { BACKEND_NAME, NATIVE_KERNELS, registerMoelabCpuBackend, setGemm, setThreads };
export type { MoelabCpuStatus, RegisterOptions, MoeActivation };
export { HOW_TO_BUILD } from './native.js';
export { pooledStorageBytes, releasePooledStorage } from './storage.js';
/** Gradients of the contract's fused kernels, for any backend that brings the kernels (moelab-cpu registers them itself). */
export { registerFusedGradients } from './kernels/index.js';

/**
 * The fused MoE MLP: out[t] = sum over assignments n with tokenIndex[n] = t of
 * weight[n] * act(x[t] w1[e_n]) w2[e_n]. x [T,d], w1 [E,d,h], w2 [E,h,d], tokenIndex / expertIndex
 * int32 [N], weight [N]. Differentiable w.r.t. x, w1, w2 and weight. Needs a backend with the
 * `MoelabMoeMLP` kernel (moelab-cpu).
 */
export function moeMLP(
  x: tfjs.Tensor2D,
  w1: tfjs.Tensor3D,
  w2: tfjs.Tensor3D,
  tokenIndex: tfjs.Tensor1D,
  expertIndex: tfjs.Tensor1D,
  weight: tfjs.Tensor1D,
  activation: MoeActivation,
  tf: typeof tfjs = tfjs,
): tfjs.Tensor2D {
  return runExpertKernel(tf, MOE_MLP_KERNEL, { x, w1, w2, tokenIndex, expertIndex, weight }, { activation });
}

/**
 * The fused gated (GLU) MoE experts: out[t] = sum over assignments n with tokenIndex[n] = t of
 * weight[n] * (act(x[t] w1[e_n]) * (x[t] w3[e_n])) w2[e_n]. x [T,d], w1 / w3 [E,d,h], w2 [E,h,d],
 * tokenIndex / expertIndex int32 [N], weight [N]; `activation` is the gate's (silu = SwiGLU).
 * Differentiable w.r.t. x, w1, w3, w2 and weight. Needs the `MoelabMoeGLU` kernel (moelab-cpu).
 */
export function moeGLU(
  x: tfjs.Tensor2D,
  w1: tfjs.Tensor3D,
  w3: tfjs.Tensor3D,
  w2: tfjs.Tensor3D,
  tokenIndex: tfjs.Tensor1D,
  expertIndex: tfjs.Tensor1D,
  weight: tfjs.Tensor1D,
  activation: MoeActivation,
  tf: typeof tfjs = tfjs,
): tfjs.Tensor2D {
  return runExpertKernel(tf, MOE_GLU_KERNEL, { x, w1, w3, w2, tokenIndex, expertIndex, weight }, { activation });
}

/**
 * Runs a fused expert kernel and returns its first output. The second output (pre-activations
 * saved for the backward kernel) is internal: the gradient tape keeps its own reference, so the
 * caller's copy is disposed here.
 */
function runExpertKernel(
  tf: typeof tfjs,
  kernel: typeof MOE_MLP_KERNEL | typeof MOE_GLU_KERNEL,
  inputs: Record<string, tfjs.Tensor>,
  attrs: MoeMlpAttrs | MoeGluAttrs,
): tfjs.Tensor2D {
  const [out, hidden] = tf.engine().runKernel(kernel, inputs as unknown as tfjs.NamedTensorMap, attrs as unknown as tfjs.NamedAttrMap) as tfjs.Tensor[];
  hidden.dispose();
  return out as tfjs.Tensor2D;
}

/**
 * One expert-selected linear map: out[outRow[n]] += weight[n] * x[inRow[n]] w[e_n]; x [R,din],
 * w [E,din,dout], inRow / outRow / expertIndex int32 [N], weight [N]; returns [outRows, dout].
 * Differentiable w.r.t. x, w and weight. Needs the `MoelabMoeLinear` kernel (moelab-cpu).
 */
export function moeLinear(
  x: tfjs.Tensor2D,
  w: tfjs.Tensor3D,
  inRow: tfjs.Tensor1D,
  outRow: tfjs.Tensor1D,
  expertIndex: tfjs.Tensor1D,
  weight: tfjs.Tensor1D,
  outRows: number,
  tf: typeof tfjs = tfjs,
): tfjs.Tensor2D {
  return tf
    .engine()
    .runKernel(
      MOE_LINEAR_KERNEL,
      { x, w, inRow, outRow, expertIndex, weight } as unknown as tfjs.NamedTensorMap,
      { outRows } satisfies MoeLinearAttrs as unknown as tfjs.NamedAttrMap,
    ) as tfjs.Tensor2D;
}

/**
 * Plugin-style descriptor, for hosts that list backend providers: what it provides and how to
 * register it. (Structural, so this package does not depend on @moelab/core.)
 */
export const moelabCpuPlugin = {
  name: '@moelab/kernels-cpu',
  kind: 'backend' as const,
  backend: BACKEND_NAME,
  description: 'Native Node-API kernels: BLAS/packed GEMM, fused MoE expert ops, fast gather/transpose/softmax/top-k/segment-sum',
  kernels: NATIVE_KERNELS,
  register: (tf?: typeof tfjs, options?: RegisterOptions): MoelabCpuStatus => registerMoelabCpuBackend(tf, options),
};
