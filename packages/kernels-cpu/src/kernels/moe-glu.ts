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
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import {
  type Args,
  expectShape,
  type KernelConfig,
  type KernelFunc,
  moeActivationCode,
  moeExpertShapes,
  type Tensor,
  type TensorInfo,
  type Tf,
  ints,
  values,
} from './helpers.js';
import { MOE_GLU_GRAD_KERNEL, MOE_GLU_KERNEL, type MoeGluGradInputs } from '@moelab/core/kernels';
import type { NativeAddon } from '../native.js';
import { outputArray } from '../storage.js';

export function makeMoeGluKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const be = (args: Args) => args.backend as unknown as MathBackendCPU;

  const glu = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(MOE_GLU_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = moeExpertShapes(MOE_GLU_KERNEL, inputs, true);
    // Native-written outputs come from the pool; without the native call they must be zeros.
    const alloc = T * d > 0 ? outputArray : (n: number) => new Float32Array(n);
    const out = alloc(T * d);
    const hidden = alloc(N * 2 * h);
    if (T * d > 0) {
      const v = (n: string) => values(backend, inputs[n]);
      const i = (n: string) => ints(backend, inputs[n]);
      native.moeGluForward(v('x'), v('w1'), v('w3'), v('w2'), i('tokenIndex'), i('expertIndex'), v('weight'), out, hidden, T, d, h, E, N, act);
    }
    return [backend.makeTensorInfo([T, d], 'float32', out), backend.makeTensorInfo([N, 2 * h], 'float32', hidden)];
  };

  const gluGrad = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(MOE_GLU_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = moeExpertShapes(MOE_GLU_GRAD_KERNEL, inputs, true);
    expectShape(MOE_GLU_GRAD_KERNEL, 'dy', inputs.dy, [T, d]);
    expectShape(MOE_GLU_GRAD_KERNEL, 'hidden', inputs.hidden, [N, 2 * h]);
    // Every element is written by the native backward (empty experts get zero gradients there).
    const dx = outputArray(T * d);
    const dw1 = outputArray(E * d * h);
    const dw3 = outputArray(E * d * h);
    const dw2 = outputArray(E * h * d);
    const dweight = outputArray(N);
    const v = (n: string) => values(backend, inputs[n]);
    const i = (n: string) => ints(backend, inputs[n]);
    native.moeGluBackward(
      v('dy'),
      v('x'),
      v('w1'),
      v('w3'),
      v('w2'),
      i('tokenIndex'),
      i('expertIndex'),
      v('weight'),
      v('hidden'),
      dx,
      dw1,
      dw3,
      dw2,
      dweight,
      T,
      d,
      h,
      E,
      N,
      act,
    );
    return [
      backend.makeTensorInfo([T, d], 'float32', dx),
      backend.makeTensorInfo([E, d, h], 'float32', dw1),
      backend.makeTensorInfo([E, d, h], 'float32', dw3),
      backend.makeTensorInfo([E, h, d], 'float32', dw2),
      backend.makeTensorInfo([N], 'float32', dweight),
    ];
  };

  return [
    { kernelName: MOE_GLU_KERNEL, backendName, kernelFunc: glu as unknown as KernelFunc },
    { kernelName: MOE_GLU_GRAD_KERNEL, backendName, kernelFunc: gluGrad as unknown as KernelFunc },
  ];
}

/**
 * The gradient of `MoelabMoeGLU`, registered once for every backend: the backward work is the
 * `MoelabMoeGLUGrad` kernel, run eagerly here (tfjs runs each closure in its own tidy, which would
 * dispose the outputs meant for the other inputs).
 */
export function registerMoeGluGradient(tf: Tf): void {
  const zerosFor = (t: Tensor) => () => tf.zeros(t.shape, 'float32');
  tf.registerGradient({
    kernelName: MOE_GLU_KERNEL,
    inputsToSave: ['x', 'w1', 'w3', 'w2', 'tokenIndex', 'expertIndex', 'weight'],
    outputsToSave: [false, true],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const [x, w1, w3, w2, tokenIndex, expertIndex, weight, hidden] = saved;
      const [dx, dw1, dw3, dw2, dweight] = tf
        .engine()
        .runKernel(
          MOE_GLU_GRAD_KERNEL,
          { dy: dOut, x, w1, w3, w2, tokenIndex, expertIndex, weight, hidden } satisfies MoeGluGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
          attrs as tfTypes.NamedAttrMap,
        ) as Tensor[];
      return {
        x: () => dx,
        w1: () => dw1,
        w3: () => dw3,
        w2: () => dw2,
        weight: () => dweight,
        tokenIndex: zerosFor(tokenIndex),
        expertIndex: zerosFor(expertIndex),
      };
    },
  });
}
