/** Test helpers: run the same computation on `cpu` and `moelab-cpu` and compare (not shipped in dist). */
import * as tf from '@tensorflow/tfjs';
import { type MoelabCpuStatus, registerMoelabCpuBackend } from '../index.js';
import { maxRelDiff } from './random.js';

export { maxRelDiff, randArray, randInts, rng } from './random.js';

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
