/**
 * The `moelab-cpu` tfjs backend: tfjs-backend-cpu's MathBackendCPU (same tensor storage, every cpu
 * kernel re-registered under the new name) with the hot kernels replaced by native ones.
 * (The name has no underscore: tfjs keys kernels as `${backend}_${kernel}`.)
 */
import * as tfjs from '@tensorflow/tfjs';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { nativeKernels, registerFusedGradients } from './kernels/index.js';
import { HOW_TO_BUILD, loadNative } from './native.js';
import { FUSED_KERNELS } from '@moelab/core/kernels';
import { noteDisposed, noteRead, noteWrap } from './storage.js';

export const BACKEND_NAME = 'moelab-cpu';

/** What registerMoelabCpuBackend found. */
export interface MoelabCpuStatus {
  /** True when the native addon loaded and the `moelab-cpu` backend is registered. */
  available: boolean;
  /** One line: what runs ("native kernels, OpenBLAS GEMM, 2 threads"), or why not and how to fix it. */
  reason: string;
  /** The GEMM in use: 'openblas', 'builtin' (the portable packed kernel), or 'none' when unavailable. */
  blas: string;
  /** Threads the native kernels use (0 when unavailable). */
  threads: number;
  /** Whether glibc's allocator was tuned to keep freed tensor memory for reuse (see RegisterOptions.tuneMalloc). */
  mallocTuned: boolean;
}

export interface RegisterOptions {
  /** tfjs backend priority (cpu is 1, wasm/webgl 2). Default 2.5: preferred over cpu and wasm when tfjs picks. */
  priority?: number;
  /** Threads for the native kernels (default: MOELAB_THREADS, else all cores). */
  threads?: number;
  /** 'openblas' (default when linked) or 'builtin' (the portable packed GEMM). */
  gemm?: 'openblas' | 'builtin';
  /**
   * Serve large blocks from glibc's heap instead of fresh mmaps, and raise its trim threshold to
   * 256 MiB, for this process (default true; MOELAB_MALLOC_TUNE=0 turns it off). Every tfjs tensor
   * is a fresh allocation; with glibc's defaults each large one is a new mmap whose pages fault in
   * one by one (~195k faults and ~1 s of system time per step of the benchmark LM). Tuned, freed
   * tensor memory is reused from the heap: the LM step ran ~1.3x faster. The cost: up to 256 MiB
   * of freed memory may stay mapped. No effect on other C libraries (musl, macOS, Windows).
   */
  tuneMalloc?: boolean;
}

const MMAP_THRESHOLD = 32 * 2 ** 20;
const TRIM_THRESHOLD = 256 * 2 ** 20;
let mallocTuned = false;

/**
 * The cpu backend without its "looks like you are running TensorFlow.js in Node.js" banner, and
 * with the three moments of a buffer's life reported to storage.ts (which recycles kernel outputs
 * and lets AdamW update in place only while nobody else can see a buffer).
 */
class MoelabCpuBackend extends MathBackendCPU {
  constructor() {
    super();
    // The banner advertises tfjs-node; here the native path is ours, so the hint is wrong.
    (this as unknown as { firstUse: boolean }).firstUse = false;
  }

  // Every new tensor's storage arrives here (makeTensorInfo calls it): a kernel's fresh output, a
  // view of an existing buffer (a contiguous Slice), or an array taken over as is.
  override write(values: tfjs.backend_util.BackendValues, shape: number[], dtype: tfjs.DataType): object {
    noteWrap(values);
    return super.write(values, shape, dtype);
  }

  // dataSync/data/buffer/array: the cpu backend returns its own array, not a copy.
  override readSync(dataId: object): tfjs.backend_util.BackendValues {
    noteRead(this.data.get(dataId)?.values);
    return super.readSync(dataId);
  }

  override disposeData(dataId: object, force = false): boolean {
    const values = this.data.get(dataId)?.values;
    const deleted = super.disposeData(dataId, force);
    if (deleted && values !== undefined) noteDisposed(values);
    return deleted;
  }
}

let registeredWith: typeof tfjs | null = null;

function statusLine(threads: number, gemm: string, tuned: boolean): string {
  return `native kernels (${gemm === 'openblas' ? 'OpenBLAS' : 'builtin packed'} GEMM, ${threads} thread${threads === 1 ? '' : 's'}${tuned ? ', malloc tuned' : ''})`;
}

/**
 * Register the `moelab-cpu` backend and its kernels (idempotent). Returns `available: false` with
 * the reason, and registers nothing, when the native addon is not built. Does not switch backends:
 * call `tf.setBackend('moelab-cpu')` (before building models: tensors move on first use).
 */
export function registerMoelabCpuBackend(tf: typeof tfjs = tfjs, options: RegisterOptions = {}): MoelabCpuStatus {
  const { addon, reason } = loadNative();
  if (!addon) return { available: false, reason, blas: 'none', threads: 0, mallocTuned: false };
  if ((options.tuneMalloc ?? process.env.MOELAB_MALLOC_TUNE !== '0') && !mallocTuned) mallocTuned = addon.tuneMalloc(MMAP_THRESHOLD, TRIM_THRESHOLD);
  if (options.threads !== undefined) addon.setThreads(Math.max(1, Math.floor(options.threads)));
  if (options.gemm !== undefined) addon.setGemm(options.gemm === 'openblas');
  const failure = registerOnce(tf, options.priority);
  if (failure) return failure;
  const info = addon.info();
  let line = statusLine(info.threads, info.gemm, mallocTuned);
  if (options.gemm === 'openblas' && !info.haveBlas) {
    line += '; OpenBLAS was requested but the addon was built without it (apt-get install -y libopenblas-dev, then pnpm rebuild @moelab/kernels-cpu)';
  }
  return { available: true, reason: line, blas: info.gemm, threads: info.threads, mallocTuned };
}

// Returns a failure status, or null when the backend is (now) registered.
function registerOnce(tf: typeof tfjs, priority = 2.5): MoelabCpuStatus | null {
  if (registeredWith) return null;
  const { addon } = loadNative();
  if (!addon) return { available: false, reason: `the native addon is not loaded. ${HOW_TO_BUILD}`, blas: 'none', threads: 0, mallocTuned: false };
  const cpuKernels = tf.getKernelsForBackend('cpu');
  if (cpuKernels.length === 0) {
    return {
      available: false,
      reason: 'tfjs-backend-cpu registered no kernels in this tfjs instance (import @tensorflow/tfjs, not @tensorflow/tfjs-core alone)',
      blas: 'none',
      threads: 0,
      mallocTuned,
    };
  }
  tf.registerBackend(BACKEND_NAME, () => new MoelabCpuBackend(), priority);
  for (const k of cpuKernels) {
    if (!tf.getKernel(k.kernelName, BACKEND_NAME)) tf.registerKernel({ ...k, backendName: BACKEND_NAME });
  }
  for (const k of nativeKernels(tf, addon, BACKEND_NAME)) {
    if (tf.getKernel(k.kernelName, BACKEND_NAME)) tf.unregisterKernel(k.kernelName, BACKEND_NAME);
    tf.registerKernel(k);
  }
  registerFusedGradients(tf);
  registeredWith = tf;
  return null;
}

/** Names of the kernels this package implements natively for `moelab-cpu`. */
export const NATIVE_KERNELS = [
  'BatchMatMul',
  '_FusedMatMul',
  'Transpose',
  'Multiply',
  'Add',
  'Sub',
  'RealDiv',
  'SquaredDifference',
  'Equal',
  'NotEqual',
  'Greater',
  'GreaterEqual',
  'Less',
  'LessEqual',
  'Slice',
  'PadV2',
  'SplitV',
  'Sum',
  'Mean',
  'Max',
  'Sqrt',
  'Rsqrt',
  'Square',
  'Neg',
  'Exp',
  'Sigmoid',
  'Log',
  'Abs',
  'Relu',
  'Step',
  'GatherV2',
  'Softmax',
  'TopK',
  'UnsortedSegmentSum',
  // Every fused kernel of core's contract.
  ...FUSED_KERNELS,
] as const;

/** Switch the native GEMM ('openblas' when linked, else 'builtin'); returns the one now in use. */
export function setGemm(gemm: 'openblas' | 'builtin'): string {
  const { addon } = loadNative();
  return addon ? addon.setGemm(gemm === 'openblas') : 'none';
}

/** Set the native thread count; returns the count now in use (0 when unavailable). */
export function setThreads(n: number): number {
  const { addon } = loadNative();
  return addon ? addon.setThreads(Math.max(1, Math.floor(n))) : 0;
}
