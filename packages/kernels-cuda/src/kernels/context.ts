/**
 * What every kernel family shares: the backend behind a call, shape helpers, and the registration
 * context, whose `fallback(name)` is the counted host fallback of that kernel (for the inputs a CUDA
 * kernel does not handle: other dtypes, rare attributes).
 */
import type * as tfTypes from '@tensorflow/tfjs';
import type { MoelabCudaBackend } from '../backend.js';
import type { CudaAddon, Ptr } from '../native.js';

export type Tf = typeof tfTypes;
export type TensorInfo = tfTypes.TensorInfo;
export type KernelFunc = tfTypes.KernelFunc;
export type Args = Parameters<KernelFunc>[0];
export type Result = TensorInfo | TensorInfo[];

export interface Ctx {
  tf: Tf;
  native: CudaAddon;
  /** The counted host fallback of kernel `name`. */
  fallback(name: string): (args: Args) => Result;
  /** Register `fn` as the CUDA kernel `name`. */
  add(name: string, fn: (args: Args) => Result): void;
}

export const backendOf = (args: Args): MoelabCudaBackend => args.backend as unknown as MoelabCudaBackend;
export const prod = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);
export const inputs = (args: Args): Record<string, TensorInfo> => args.inputs as unknown as Record<string, TensorInfo>;

/** Device addresses of the named inputs, by name (an absent one is left out: the addon names it if it was needed). */
export function devInputs<const K extends string>(args: Args, names: readonly K[]): Record<K, Ptr> {
  const ins = inputs(args);
  const be = backendOf(args);
  const out: Partial<Record<K, Ptr>> = {};
  for (const n of names) if (ins[n]) out[n] = be.dev(ins[n]);
  return out as Record<K, Ptr>;
}

/** Throws `${kernel}: input 'name' must be <dtype>, got ...` for a missing input or another dtype. */
export function expectDtype(kernel: string, ins: Record<string, TensorInfo>, names: string[], dtype: 'float32' | 'int32' = 'float32'): void {
  for (const n of names) {
    const t = ins[n];
    if (t?.dtype !== dtype) throw new Error(`${kernel}: input '${n}' must be ${dtype}, got ${t ? t.dtype : 'nothing'}`);
  }
}

/** Throws `${kernel}: input 'name' has shape [..], expected [..]` unless the shapes are equal. */
export function expectShape(kernel: string, name: string, t: TensorInfo, shape: readonly number[]): void {
  const ok = t.shape.length === shape.length && t.shape.every((s, i) => s === shape[i]);
  if (!ok) throw new Error(`${kernel}: input '${name}' has shape [${t.shape}], expected [${shape}]`);
}

/** Row-major strides of `shape`. */
export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

/** Strides of `shape` read as `out` (numpy broadcasting, aligned at the last axis): 0 along broadcast axes. */
export function broadcastStrides(shape: readonly number[], out: readonly number[]): number[] {
  const own = stridesOf(shape);
  const lead = out.length - shape.length;
  return out.map((_, i) => {
    const j = i - lead;
    return j < 0 || shape[j] === 1 ? 0 : own[j]!;
  });
}
