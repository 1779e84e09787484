/** Test helpers: run the same computation on `cpu` and `moelab-cpu` and compare (not shipped in dist). */
import * as tf from '@tensorflow/tfjs';
import { type MoelabCpuStatus, registerMoelabCpuBackend } from '../index.js';

/**
 * Another backend that runs these kernels and these tests (kernels-wasm's suite sets it before it
 * imports the test files, and maps the name `moelab-cpu` to its own): its name and status.
 */
const other = (globalThis as { __moelabKernelsUnderTest?: { name: string; status: MoelabCpuStatus } }).__moelabKernelsUnderTest;
const cpuStatus = registerMoelabCpuBackend(tf);
/** The backend these tests check against `cpu`: moelab-cpu, or the one kernels-cpu's suite is run for. */
export const underTest = other?.name ?? 'moelab-cpu';
export const status = other?.status ?? cpuStatus;
// Makes the engine check every kernel for leaked data ids (docs/engine.md#traps).
tf.env().set('IS_TEST', true);

/** Deterministic PRNG (mulberry32) so a failing case can be reproduced. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randArray(r: () => number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

export function randInts(r: () => number, n: number, limit: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(r() * limit);
  return out;
}

export interface Spec {
  shape: number[];
  data: Float32Array | Int32Array;
  dtype?: 'float32' | 'int32';
}

/** Results (as plain arrays + shapes) of `fn` on a backend, with all its tensors disposed. */
export async function runOn(
  backend: string,
  specs: Spec[],
  fn: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
): Promise<{ shape: number[]; dtype: string; data: Float32Array | Int32Array }[]> {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const ts = specs.map((s) => tf.tensor(s.data, s.shape, s.dtype ?? (s.data instanceof Int32Array ? 'int32' : 'float32')));
    const out = fn(...ts);
    const list = Array.isArray(out) ? out : [out];
    return list.map((t) => ({ shape: t.shape.slice(), dtype: t.dtype, data: t.dataSync() as Float32Array | Int32Array }));
  });
}

/** Largest |a-b| / (1 + |b|) over the elements. */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i]));
    if (!(d <= m)) m = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
  }
  return m;
}

/** Run on both backends; assert identical shapes/dtypes and values within `tol`. Returns the worst difference. */
export async function compareBackends(specs: Spec[], fn: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[], tol = 1e-4, reference = 'cpu'): Promise<number> {
  const ref = await runOn(reference, specs, fn);
  const got = await runOn('moelab-cpu', specs, fn);
  if (ref.length !== got.length) throw new Error(`output count ${got.length} != ${ref.length}`);
  let worst = 0;
  ref.forEach((r, i) => {
    const g = got[i];
    if (r.shape.join(',') !== g.shape.join(',')) throw new Error(`output ${i}: shape [${g.shape}] != [${r.shape}]`);
    if (r.dtype !== g.dtype) throw new Error(`output ${i}: dtype ${g.dtype} != ${r.dtype}`);
    const d = maxRelDiff(g.data, r.data);
    if (!(d <= tol)) throw new Error(`output ${i} (shape [${r.shape}]): max relative difference ${d} > ${tol}`);
    worst = Math.max(worst, d);
  });
  return worst;
}
