/**
 * Test helpers (not shipped in dist): the backend under test is `moelab-cuda-emu` (the kernels on
 * the CPU emulation of the launch grid), or `moelab-cuda` on a real GPU with
 * MOELAB_CUDA_TEST_DEVICE=1 (scripts/device-check.sh sets it). Results are compared with the plain
 * `cpu` backend.
 */
import * as tf from '@tensorflow/tfjs';
import { maxRelDiff } from '@moelab/kernels-cpu/testing/random';
import { registerMoelabCudaBackend } from '../register.js';

export { maxRelDiff, randArray, randInts, rng } from '@moelab/kernels-cpu/testing/random';

export const onDevice = process.env.MOELAB_CUDA_TEST_DEVICE === '1';
export const status = registerMoelabCudaBackend(tf, { emulate: !onDevice });
export const NAME = status.backend;
/** Why the suite is skipped, for test titles ('' when it runs). */
export const skipReason = status.available ? '' : ` (skipped: ${status.reason})`;
// TF32 tensor cores round GEMM inputs to 10 mantissa bits on the device.
export const gemmTol = onDevice ? 2e-2 : 1e-4;

tf.env().set('IS_TEST', true);

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

/**
 * Runs `ref` on `reference` (default `cpu`) and `fn` (default: `ref`) on the backend under test;
 * throws unless shapes, dtypes and values (within `tol`) agree. Returns the worst difference.
 */
export async function compare(specs: Spec[], ref: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[], tol = 1e-4, fn = ref, reference = 'cpu'): Promise<number> {
  const want = await runOn(reference, specs, ref);
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
