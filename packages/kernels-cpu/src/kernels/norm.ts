/**
 * Fused LayerNorm (@moelab/core/kernels: LAYER_NORM_KERNEL and its Grad kernel) for moelab-cpu,
 * and its gradient:
 *
 *   y = (x - mean) rstd gamma + beta,  rstd = 1 / sqrt(var + eps)  (var biased, as tf.moments)
 *
 * Op by op (core's generic version) a LayerNorm is ~8 kernels forward (moments, subtract, rsqrt,
 * scale, shift) and ~20 backward, each a pass over [tokens, d] with broadcasts; the anchor's LM has
 * 9 of them per step.
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import { type Args, expectDtype, expectShape, type KernelFunc, type Tensor, type TensorInfo, type Tf, values } from './helpers.js';
import { LAYER_NORM_GRAD_KERNEL, LAYER_NORM_KERNEL, type LayerNormAttrs, type LayerNormGradAttrs, type LayerNormGradInputs } from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import type { NativeAddon } from '../native.js';

function shapes(kernel: string, inputs: Record<string, TensorInfo>, names: string[]) {
  expectDtype(kernel, inputs, names);
  const x = inputs.x;
  if (x.shape.length < 1) throw new Error(`${kernel}: x must have at least one axis`);
  const D = x.shape[x.shape.length - 1];
  const rows = D === 0 ? 0 : x.shape.reduce((a, b) => a * b, 1) / D;
  for (const n of ['gamma', 'beta']) if (inputs[n]) expectShape(kernel, n, inputs[n], [D]);
  return { D, rows, statShape: x.shape.slice(0, -1) };
}

export function makeNormKernels(native: NativeAddon, backendName: string): tfTypes.KernelConfig[] {
  const forward = (args: Args): TensorInfo[] => {
    const backend = args.backend as unknown as MathBackendCPU;
    const inputs = args.inputs as Record<string, TensorInfo>;
    const { D, rows, statShape } = shapes(LAYER_NORM_KERNEL, inputs, inputs.beta ? ['x', 'gamma', 'beta'] : ['x', 'gamma']);
    const eps = Number(args.attrs?.eps);
    if (!(eps >= 0)) throw new Error(`${LAYER_NORM_KERNEL}: attr eps must be a non-negative number`);
    const y = outputArray(rows * D);
    const mean = outputArray(rows);
    const rstd = outputArray(rows);
    const v = (n: string) => values(backend, inputs[n]);
    if (rows * D > 0) native.layerNormForward(v('x'), v('gamma'), inputs.beta ? v('beta') : null, y, mean, rstd, rows, D, eps);
    return [
      backend.makeTensorInfo(inputs.x.shape, 'float32', y),
      backend.makeTensorInfo(statShape, 'float32', mean),
      backend.makeTensorInfo(statShape, 'float32', rstd),
    ];
  };

  const backward = (args: Args): TensorInfo[] => {
    const backend = args.backend as unknown as MathBackendCPU;
    const inputs = args.inputs as Record<string, TensorInfo>;
    const { D, rows } = shapes(LAYER_NORM_GRAD_KERNEL, inputs, ['dy', 'x', 'gamma', 'mean', 'rstd']);
    const hasBeta = !!args.attrs?.hasBeta;
    const dx = outputArray(rows * D);
    const dgamma = new Float32Array(D);
    const dbeta = hasBeta ? new Float32Array(D) : null;
    const v = (n: string) => values(backend, inputs[n]);
    if (rows * D > 0) native.layerNormBackward(v('dy'), v('x'), v('gamma'), v('mean'), v('rstd'), dx, dgamma, dbeta, rows, D);
    const out = [backend.makeTensorInfo(inputs.x.shape, 'float32', dx), backend.makeTensorInfo([D], 'float32', dgamma)];
    if (dbeta) out.push(backend.makeTensorInfo([D], 'float32', dbeta));
    return out;
  };

  return [
    { kernelName: LAYER_NORM_KERNEL, backendName, kernelFunc: forward as unknown as KernelFunc },
    { kernelName: LAYER_NORM_GRAD_KERNEL, backendName, kernelFunc: backward as unknown as KernelFunc },
  ];
}

/** Gradient of the fused LayerNorm (see registerMoeGradients for the pattern). */
export function registerNormGradients(tf: Tf): void {
  tf.registerGradient({
    kernelName: LAYER_NORM_KERNEL,
    inputsToSave: ['x', 'gamma'],
    outputsToSave: [false, true, true],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const [x, gamma, mean, rstd] = saved;
      // Whether beta was an input: the forward's attrs carry it (core sets hasBeta).
      const hasBeta = !!(attrs as Partial<LayerNormAttrs> | undefined)?.hasBeta;
      const [dx, dgamma, dbeta] = tf
        .engine()
        .runKernel(
          LAYER_NORM_GRAD_KERNEL,
          { dy: dOut, x, gamma, mean, rstd } satisfies LayerNormGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
          { hasBeta } satisfies LayerNormGradAttrs as unknown as tfTypes.NamedAttrMap,
        ) as Tensor[];
      const grads: Record<string, () => Tensor> = { x: () => dx!, gamma: () => dgamma! };
      if (dbeta) grads.beta = () => dbeta;
      return grads;
    },
  });
}
