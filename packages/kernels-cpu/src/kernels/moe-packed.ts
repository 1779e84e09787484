/**
 * The fused MoE experts on packed (weight-only quantized) expert weights, MOE_PACKED_KERNEL and
 * MOE_PACKED_GRAD_KERNEL of the kernel contract (@moelab/core/kernels), for moelab-cpu, and their
 * gradient:
 *
 *   W[e,i,j] = scale[e, i/group, j] * (u[e,i,j] - zero[e, i/group, j])     (u: `bits`-bit codes)
 *   out[t]   = sum_{n: tokenIndex[n] = t} weight[n] * expert_{e_n}(x[t])   (MLP, or GLU with w3)
 *
 * The native kernel runs the float kernels' code with a weight source that dequantizes one
 * expert's blocks into the running task's scratch just before its GEMMs, so the only resident copy
 * of the expert weights is the packed one (layout: src/native/quant.h, docs/kernel-contract.md).
 * The backward gives dx and dweight: packed weights are frozen (zero gradients for the codes,
 * scales and zeros).
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import { MOE_PACKED_GRAD_KERNEL, MOE_PACKED_KERNEL, type MoePackedGradInputs, PACKED_BITS, packedGroups, packedRowWords } from '@moelab/core/kernels';
import {
  type Args,
  expectDtype,
  expectShape,
  type KernelConfig,
  type KernelFunc,
  moeActivationCode,
  prod,
  type Tensor,
  type TensorInfo,
  type Tf,
  ints,
  values,
} from './helpers.js';
import type { NativeAddon, PackedWeightArrays } from '../native.js';
import { outputArray } from '../storage.js';
import { hiddenHandle, hiddenValues } from './moe.js';

const WEIGHTS = ['w1', 'w3', 'w2'] as const;

/** Checks a packed kernel's inputs and attrs; returns the sizes, code width and group. */
function packedShapes(kernel: string, inputs: Record<string, TensorInfo>, attrs: Args['attrs']) {
  const bits = Number(attrs?.bits);
  const group = Number(attrs?.group ?? 0);
  if (!(PACKED_BITS as readonly number[]).includes(bits))
    throw new Error(`${kernel}: attr bits must be one of ${PACKED_BITS.join(', ')}, got ${String(attrs?.bits)}`);
  if (!Number.isInteger(group) || group < 0) throw new Error(`${kernel}: attr group must be a non-negative integer, got ${String(attrs?.group)}`);
  // Ungated experts pass empty w3 tensors.
  const gated = inputs.w3Codes !== undefined && prod(inputs.w3Codes.shape) > 0;
  const present = WEIGHTS.filter((w) => w !== 'w3' || gated);
  expectDtype(kernel, inputs, ['x', 'weight', ...present.flatMap((w) => [`${w}Scale`, `${w}Zero`])]);
  expectDtype(kernel, inputs, ['tokenIndex', 'expertIndex', ...present.map((w) => `${w}Codes`)], 'int32');
  const { x, w1Scale, tokenIndex } = inputs;
  if (x.shape.length !== 2 || w1Scale.shape.length !== 3) throw new Error(`${kernel}: x must be [T,d] and w1Scale [E,G,h]`);
  const [T, d] = x.shape;
  const [E, , h] = w1Scale.shape;
  const N = tokenIndex.shape.reduce((a, b) => a * b, 1);
  for (const w of present) {
    const [din, dout] = w === 'w2' ? [h, d] : [d, h];
    expectShape(kernel, `${w}Codes`, inputs[`${w}Codes`], [E, din, packedRowWords(dout, bits)]);
    expectShape(kernel, `${w}Scale`, inputs[`${w}Scale`], [E, packedGroups(din, group), dout]);
    expectShape(kernel, `${w}Zero`, inputs[`${w}Zero`], [E, packedGroups(din, group), dout]);
  }
  for (const n of ['tokenIndex', 'expertIndex', 'weight']) expectShape(kernel, n, inputs[n], [N]);
  return { T, d, h, E, N, bits, group, gated };
}

export function makeMoePackedKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const be = (args: Args) => args.backend as unknown as MathBackendCPU;

  /** w1, w3 (null for ungated experts) and w2 as the addon takes them. */
  function weightArrays(backend: MathBackendCPU, inputs: Record<string, TensorInfo>, gated: boolean) {
    const packed = (w: 'w1' | 'w3' | 'w2'): PackedWeightArrays => ({
      codes: ints(backend, inputs[`${w}Codes`]),
      scale: values(backend, inputs[`${w}Scale`]),
      zero: values(backend, inputs[`${w}Zero`]),
    });
    return [packed('w1'), gated ? packed('w3') : null, packed('w2')] as const;
  }

  const forward = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(MOE_PACKED_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N, bits, group, gated } = packedShapes(MOE_PACKED_KERNEL, inputs, args.attrs);
    const hw = gated ? 2 * h : h;
    // Native-written outputs come from the pool; without the native call they must be zeros.
    const alloc = T * d > 0 ? outputArray : (n: number) => new Float32Array(n);
    const out = alloc(T * d);
    const hidden = alloc(N * hw);
    if (T * d > 0) {
      native.moePackedForward(
        values(backend, inputs.x),
        ...weightArrays(backend, inputs, gated),
        ints(backend, inputs.tokenIndex),
        ints(backend, inputs.expertIndex),
        values(backend, inputs.weight),
        out,
        hidden,
        T,
        d,
        h,
        E,
        N,
        act,
        bits,
        group,
      );
    }
    return [backend.makeTensorInfo([T, d], 'float32', out), hiddenHandle(backend, hidden)];
  };

  const backward = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const act = moeActivationCode(MOE_PACKED_GRAD_KERNEL, args.attrs?.activation);
    const { T, d, h, E, N, bits, group, gated } = packedShapes(MOE_PACKED_GRAD_KERNEL, inputs, args.attrs);
    expectShape(MOE_PACKED_GRAD_KERNEL, 'dy', inputs.dy, [T, d]);
    const hidden = hiddenValues(MOE_PACKED_GRAD_KERNEL, backend, inputs.hidden, N * (gated ? 2 * h : h));
    // Every element is written by the native backward.
    const dx = outputArray(T * d);
    const dweight = outputArray(N);
    native.moePackedBackward(
      values(backend, inputs.dy),
      values(backend, inputs.x),
      ...weightArrays(backend, inputs, gated),
      ints(backend, inputs.tokenIndex),
      ints(backend, inputs.expertIndex),
      values(backend, inputs.weight),
      hidden,
      dx,
      dweight,
      T,
      d,
      h,
      E,
      N,
      act,
      bits,
      group,
    );
    return [backend.makeTensorInfo([T, d], 'float32', dx), backend.makeTensorInfo([N], 'float32', dweight)];
  };

  return [
    { kernelName: MOE_PACKED_KERNEL, backendName, kernelFunc: forward as unknown as KernelFunc },
    { kernelName: MOE_PACKED_GRAD_KERNEL, backendName, kernelFunc: backward as unknown as KernelFunc },
  ];
}

/**
 * The gradient of `MoelabMoePacked`, registered once for every backend: the backward work is the
 * `MoelabMoePackedGrad` kernel, run eagerly here (tfjs runs each closure in its own tidy, which
 * would dispose the outputs meant for the other inputs). Codes, scales and zeros get zeros.
 */
export function registerMoePackedGradient(tf: Tf): void {
  const zerosFor = (t: Tensor) => () => tf.zeros(t.shape, t.dtype);
  const saveNames = [
    'x',
    'w1Codes',
    'w1Scale',
    'w1Zero',
    'w3Codes',
    'w3Scale',
    'w3Zero',
    'w2Codes',
    'w2Scale',
    'w2Zero',
    'tokenIndex',
    'expertIndex',
    'weight',
  ] as const;
  tf.registerGradient({
    kernelName: MOE_PACKED_KERNEL,
    inputsToSave: [...saveNames],
    outputsToSave: [false, true],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const named = Object.fromEntries(saveNames.map((n, i) => [n, saved[i]!])) as Record<(typeof saveNames)[number], Tensor>;
      const hidden = saved[saveNames.length]!;
      const [dx, dweight] = tf
        .engine()
        .runKernel(
          MOE_PACKED_GRAD_KERNEL,
          { ...named, dy: dOut, hidden } satisfies MoePackedGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
          attrs as tfTypes.NamedAttrMap,
        ) as Tensor[];
      const grads: Record<string, () => Tensor> = { x: () => dx!, weight: () => dweight! };
      for (const n of saveNames) if (!(n in grads)) grads[n] = zerosFor(named[n]);
      return grads;
    },
  });
}
