/**
 * Test helpers (not shipped in dist): the backend under test is `moelab-cuda-emu` (the kernels on
 * the CPU emulation of the launch grid), or `moelab-cuda` on a real GPU with
 * MOELAB_CUDA_TEST_DEVICE=1 (scripts/device-check.sh sets it). Results are compared with the plain
 * `cpu` backend.
 */
import * as tf from '@tensorflow/tfjs';
import { registerMoelabCudaBackend } from '../register.js';

export const onDevice = process.env.MOELAB_CUDA_TEST_DEVICE === '1';
export const status = registerMoelabCudaBackend(tf, { emulate: !onDevice });
export const NAME = status.backend;
/** Why the suite is skipped, for test titles ('' when it runs). */
export const skipReason = status.available ? '' : ` (skipped: ${status.reason})`;
// TF32 tensor cores round GEMM inputs to 10 mantissa bits on the device.
export const gemmTol = onDevice ? 2e-2 : 1e-4;

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
}

export interface Output {
  shape: number[];
  dtype: string;
  data: ArrayLike<number>;
}

/** Results of `fn` on `backend` (as plain arrays), with every tensor disposed. */
export async function runOn(backend: string, specs: Spec[], fn: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[]): Promise<Output[]> {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const ts = specs.map((s) => tf.tensor(s.data, s.shape, s.data instanceof Int32Array ? 'int32' : 'float32'));
    const out = fn(...ts);
    const list = Array.isArray(out) ? out : [out];
    return list.map((t) => ({ shape: t.shape.slice(), dtype: t.dtype, data: Array.from(t.dataSync() as Float32Array) }));
  });
}

/** Largest |a-b| / (1 + |b|) over the elements (NaN counts as infinitely far unless both are NaN). */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]!) && Number.isNaN(b[i]!)) continue;
    const d = Math.abs(a[i]! - b[i]!) / (1 + Math.abs(b[i]!));
    if (!(d <= m)) m = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
  }
  return m;
}

/**
 * Runs `ref` on `cpu` and `fn` (default: `ref`) on the backend under test; throws unless shapes,
 * dtypes and values (within `tol`) agree. Returns the worst difference.
 */
export async function compare(specs: Spec[], ref: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[], tol = 1e-4, fn = ref): Promise<number> {
  const want = await runOn('cpu', specs, ref);
  const got = await runOn(NAME, specs, fn);
  if (want.length !== got.length) throw new Error(`output count ${got.length} != ${want.length}`);
  let worst = 0;
  want.forEach((w, i) => {
    const g = got[i]!;
    if (w.shape.join(',') !== g.shape.join(',')) throw new Error(`output ${i}: shape [${g.shape}] != [${w.shape}]`);
    if (w.dtype !== g.dtype) throw new Error(`output ${i}: dtype ${g.dtype} != ${w.dtype}`);
    const d = maxRelDiff(g.data, w.data);
    if (!(d <= tol)) throw new Error(`output ${i} (shape [${w.shape}]): max relative difference ${d} > ${tol}`);
    worst = Math.max(worst, d);
  });
  return worst;
}
