/** Types and input checks shared by the kernel files (moe.ts, attention.ts, norm.ts, adamw.ts). */
import type * as tfTypes from '@tensorflow/tfjs';

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
