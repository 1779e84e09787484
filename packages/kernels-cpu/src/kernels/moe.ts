/**
 * The fused MoE expert ops of the kernel contract (@moelab/core/kernels: MOE_MLP_KERNEL,
 * MOE_LINEAR_KERNEL and their Grad kernels) for the moelab-cpu backend, and their gradients.
 *
 *   MoeMLP:    out[t] = sum_{n: tokenIndex[n]=t} weight[n] * act(x[t] w1[e_n]) w2[e_n]
 *   MoeLinear: out[outRow[n]] += weight[n] * x[inRow[n]] w[e_n]
 *
 * moelab-cpu's `hidden` output is each assignment's pre-activation (for relu and identity the
 * activation itself), in expert-sorted order. It is a second output saved through
 * `outputsToSave` rather than a tf.customGrad closure, which leaks data ids (docs/engine.md#traps).
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import {
  type Args,
  expectDtype,
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
import {
  MOE_LINEAR_GRAD_KERNEL,
  MOE_LINEAR_KERNEL,
  MOE_MLP_GRAD_KERNEL,
  MOE_MLP_KERNEL,
  type MoeLinearGradInputs,
  type MoeMlpGradInputs,
} from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import type { NativeAddon } from '../native.js';

export function makeMoeKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const be = (args: Args) => args.backend as unknown as MathBackendCPU;

  function linearShapes(kernel: string, inputs: Record<string, TensorInfo>, outRows: number) {
    expectDtype(kernel, inputs, ['x', 'w', 'weight']);
    expectDtype(kernel, inputs, ['inRow', 'outRow', 'expertIndex'], 'int32');
    const { x, w, inRow } = inputs;
    if (x.shape.length !== 2 || w.shape.length !== 3) throw new Error(`${kernel}: x must be [R,din] and w [E,din,dout]`);
    if (!Number.isInteger(outRows) || outRows < 0) throw new Error(`${kernel}: attr outRows must be a non-negative integer`);
    const [R, din] = x.shape;
    const [E, , dout] = w.shape;
    const N = inRow.shape.reduce((a, b) => a * b, 1);
    expectShape(kernel, 'w', w, [E, din, dout]);
    for (const n of ['inRow', 'outRow', 'expertIndex', 'weight']) expectShape(kernel, n, inputs[n], [N]);
    return { R, din, dout, E, N };
  }

  const mlp = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(MOE_MLP_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = moeExpertShapes(MOE_MLP_KERNEL, inputs, false);
    // Native-written outputs come from the pool; without the native call they must be zeros.
    const alloc = T * d > 0 ? outputArray : (n: number) => new Float32Array(n);
    const out = alloc(T * d);
    const hidden = alloc(N * h);
    if (T * d > 0) {
      const v = (n: string) => values(backend, inputs[n]);
      const i = (n: string) => ints(backend, inputs[n]);
      native.moeMlpForward(v('x'), v('w1'), v('w2'), i('tokenIndex'), i('expertIndex'), v('weight'), out, hidden, T, d, h, E, N, act);
    }
    return [backend.makeTensorInfo([T, d], 'float32', out), backend.makeTensorInfo([N, h], 'float32', hidden)];
  };

  const mlpGrad = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(MOE_MLP_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N } = moeExpertShapes(MOE_MLP_GRAD_KERNEL, inputs, false);
    expectShape(MOE_MLP_GRAD_KERNEL, 'dy', inputs.dy, [T, d]);
    expectShape(MOE_MLP_GRAD_KERNEL, 'hidden', inputs.hidden, [N, h]);
    // Every element is written by the native backward (empty experts get zero gradients there).
    const dx = outputArray(T * d);
    const dw1 = outputArray(E * d * h);
    const dw2 = outputArray(E * h * d);
    const dweight = outputArray(N);
    const v = (n: string) => values(backend, inputs[n]);
    const i = (n: string) => ints(backend, inputs[n]);
    native.moeMlpBackward(
      v('dy'),
      v('x'),
      v('w1'),
      v('w2'),
      i('tokenIndex'),
      i('expertIndex'),
      v('weight'),
      v('hidden'),
      dx,
      dw1,
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
      backend.makeTensorInfo([E, h, d], 'float32', dw2),
      backend.makeTensorInfo([N], 'float32', dweight),
    ];
  };

  const linear = (args: Args): TensorInfo => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const outRows = Number(args.attrs?.outRows);
    const { R, din, dout, E, N } = linearShapes(MOE_LINEAR_KERNEL, inputs, outRows);
    const out = outputArray(outRows * dout);
    if (out.length > 0) {
      const v = (n: string) => values(backend, inputs[n]);
      const i = (n: string) => ints(backend, inputs[n]);
      native.moeLinearForward(v('x'), v('w'), i('inRow'), i('outRow'), i('expertIndex'), v('weight'), out, R, din, dout, E, N, outRows);
    }
    return backend.makeTensorInfo([outRows, dout], 'float32', out);
  };

  const linearGrad = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const outRows = Number(args.attrs?.outRows);
    const { R, din, dout, E, N } = linearShapes(MOE_LINEAR_GRAD_KERNEL, inputs, outRows);
    expectShape(MOE_LINEAR_GRAD_KERNEL, 'dy', inputs.dy, [outRows, dout]);
    const dx = outputArray(R * din);
    const dw = outputArray(E * din * dout);
    const dweight = outputArray(N);
    const v = (n: string) => values(backend, inputs[n]);
    const i = (n: string) => ints(backend, inputs[n]);
    native.moeLinearBackward(v('dy'), v('x'), v('w'), i('inRow'), i('outRow'), i('expertIndex'), v('weight'), dx, dw, dweight, R, din, dout, E, N, outRows);
    return [
      backend.makeTensorInfo([R, din], 'float32', dx),
      backend.makeTensorInfo([E, din, dout], 'float32', dw),
      backend.makeTensorInfo([N], 'float32', dweight),
    ];
  };

  return [
    { kernelName: MOE_MLP_KERNEL, backendName, kernelFunc: mlp as unknown as KernelFunc },
    { kernelName: MOE_MLP_GRAD_KERNEL, backendName, kernelFunc: mlpGrad as unknown as KernelFunc },
    { kernelName: MOE_LINEAR_KERNEL, backendName, kernelFunc: linear as unknown as KernelFunc },
    { kernelName: MOE_LINEAR_GRAD_KERNEL, backendName, kernelFunc: linearGrad as unknown as KernelFunc },
  ];
}

/**
 * Gradients of the two fused ops, registered once for every backend. The backward work is itself a
 * kernel (`...Grad`) so each backend brings its own; the closures only hand out its outputs. It is
 * run eagerly here, not inside the closures: tfjs runs each closure in its own tidy, which would
 * dispose the outputs meant for the other inputs.
 */
export function registerMoeGradients(tf: Tf): void {
  const zerosFor = (t: Tensor) => () => tf.zeros(t.shape, 'float32');
  tf.registerGradient({
    kernelName: MOE_MLP_KERNEL,
    inputsToSave: ['x', 'w1', 'w2', 'tokenIndex', 'expertIndex', 'weight'],
    outputsToSave: [false, true],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const [x, w1, w2, tokenIndex, expertIndex, weight, hidden] = saved;
      const [dx, dw1, dw2, dweight] = tf
        .engine()
        .runKernel(
          MOE_MLP_GRAD_KERNEL,
          { dy: dOut, x, w1, w2, tokenIndex, expertIndex, weight, hidden } satisfies MoeMlpGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
          attrs as tfTypes.NamedAttrMap,
        ) as Tensor[];
      return {
        x: () => dx,
        w1: () => dw1,
        w2: () => dw2,
        weight: () => dweight,
        tokenIndex: zerosFor(tokenIndex),
        expertIndex: zerosFor(expertIndex),
      };
    },
  });
  tf.registerGradient({
    kernelName: MOE_LINEAR_KERNEL,
    inputsToSave: ['x', 'w', 'inRow', 'outRow', 'expertIndex', 'weight'],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const [x, w, inRow, outRow, expertIndex, weight] = saved;
      const [dx, dw, dweight] = tf
        .engine()
        .runKernel(
          MOE_LINEAR_GRAD_KERNEL,
          { dy: dOut, x, w, inRow, outRow, expertIndex, weight } satisfies MoeLinearGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
          attrs as tfTypes.NamedAttrMap,
        ) as Tensor[];
      return {
        x: () => dx,
        w: () => dw,
        weight: () => dweight,
        inRow: zerosFor(inRow),
        outRow: zerosFor(outRow),
        expertIndex: zerosFor(expertIndex),
      };
    },
  });
}
