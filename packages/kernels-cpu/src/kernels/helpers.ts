/**
 * What every kernel file shares: the tfjs types, zero-copy access to a tensor's storage, input
 * checks, and the context a family of stock-kernel overrides registers through (with the stock cpu
 * kernel as the fallback for inputs a native kernel does not handle).
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import { isMoeActivation, MOE_ACTIVATION_CODE } from '@moelab/core/kernels';
import type { NativeAddon } from '../native.js';

export type Tf = typeof tfTypes;
export type Tensor = tfTypes.Tensor;
export type TensorInfo = tfTypes.TensorInfo;
export type KernelConfig = tfTypes.KernelConfig;
export type KernelFunc = tfTypes.KernelFunc;
export type Args = Parameters<KernelFunc>[0];

/** Throws `${kernel}: input 'name' must be <dtype>, got ...` for a missing input or another dtype. */
export function expectDtype(kernel: string, inputs: Record<string, TensorInfo>, names: string[], dtype: 'float32' | 'int32' = 'float32'): void {
  for (const n of names) {
    const t = inputs[n];
    if (t?.dtype !== dtype) throw new Error(`${kernel}: input '${n}' must be ${dtype}, got ${t ? t.dtype : 'nothing'}`);
  }
}

/** Throws `${kernel}: input 'name' has shape [..], expected [..]` unless the shapes are equal. */
export function expectShape(kernel: string, name: string, t: TensorInfo, shape: readonly number[]): void {
  const ok = t.shape.length === shape.length && t.shape.every((s, i) => s === shape[i]);
  if (!ok) throw new Error(`${kernel}: input '${name}' has shape [${t.shape}], expected [${shape}]`);
}

/** The cpu backend behind a kernel call (moelab-cpu *is* a MathBackendCPU). */
export const backendOf = (args: Args): MathBackendCPU => args.backend as unknown as MathBackendCPU;

// The cpu backend does not promise a Float32Array behind every float32 tensor: some kernels
// (e.g. Cast from bool) keep the source array (a Uint8Array). Those rare inputs are converted;
// the common case is zero-copy.
export function values(backend: MathBackendCPU, t: TensorInfo): Float32Array {
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array ? v : Float32Array.from(v as ArrayLike<number>);
}
export function ints(backend: MathBackendCPU, t: TensorInfo): Int32Array {
  const v = backend.data.get(t.dataId).values;
  return v instanceof Int32Array ? v : Int32Array.from(v as ArrayLike<number>);
}

/** The native code of a fused MoE kernel's `activation` attribute; throws `${kernel}: unknown activation ...`. */
export function moeActivationCode(kernel: string, a: unknown): number {
  if (typeof a !== 'string' || !isMoeActivation(a)) {
    throw new Error(`${kernel}: unknown activation '${String(a)}' (expected ${Object.keys(MOE_ACTIVATION_CODE).join(', ')})`);
  }
  return MOE_ACTIVATION_CODE[a];
}

const UNGATED_FLOATS = ['x', 'w1', 'w2', 'weight'];
const GATED_FLOATS = ['x', 'w1', 'w3', 'w2', 'weight'];
const ASSIGNMENT_INTS = ['tokenIndex', 'expertIndex'];

/**
 * Checks the inputs of a fused MoE expert kernel (x [T,d], w1 [E,d,h], w3 [E,d,h] when `gated`,
 * w2 [E,h,d], tokenIndex / expertIndex int32 [N], weight [N]) and returns their sizes.
 */
export function moeExpertShapes(kernel: string, inputs: Record<string, TensorInfo>, gated: boolean): { T: number; d: number; h: number; E: number; N: number } {
  expectDtype(kernel, inputs, gated ? GATED_FLOATS : UNGATED_FLOATS);
  expectDtype(kernel, inputs, ASSIGNMENT_INTS, 'int32');
  const { x, w1, tokenIndex } = inputs;
  if (x.shape.length !== 2 || w1.shape.length !== 3) throw new Error(`${kernel}: x must be [T,d] and w1 [E,d,h]`);
  const [T, d] = x.shape;
  const [E, , h] = w1.shape;
  const N = tokenIndex.shape.reduce((a, b) => a * b, 1);
  expectShape(kernel, 'w1', w1, [E, d, h]);
  if (gated) expectShape(kernel, 'w3', inputs.w3, [E, d, h]);
  expectShape(kernel, 'w2', inputs.w2, [E, h, d]);
  expectShape(kernel, 'tokenIndex', tokenIndex, [N]);
  expectShape(kernel, 'expertIndex', inputs.expertIndex, [N]);
  expectShape(kernel, 'weight', inputs.weight, [N]);
  return { T, d, h, E, N };
}

/** Number of elements of a shape. */
export const prod = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

/** What a family of overrides of the stock cpu kernels registers through. */
export interface Overrides {
  tf: Tf;
  native: NativeAddon;
  /** The stock cpu kernel `name`, for the inputs a native kernel hands back (looked up when that happens). */
  cpu(name: string): KernelFunc;
  /** Register `kernelFunc` as `kernelName` on the moelab-cpu backend. */
  add(kernelName: string, kernelFunc: (args: Args) => TensorInfo | TensorInfo[]): void;
}

/** An {@link Overrides} collecting its registrations into `configs`. */
export function overrides(tf: Tf, native: NativeAddon, backendName: string, configs: KernelConfig[]): Overrides {
  return {
    tf,
    native,
    cpu(name) {
      const k = tf.getKernel(name, 'cpu');
      if (!k) throw new Error(`moelab-cpu: the cpu backend has no ${name} kernel to fall back to`);
      return k.kernelFunc;
    },
    add(kernelName, kernelFunc) {
      configs.push({ kernelName, backendName, kernelFunc: kernelFunc as KernelFunc });
    },
  };
}
