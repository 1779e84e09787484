/**
 * The `moelab-wasm` tfjs backend: tfjs-backend-cpu's MathBackendCPU (every stock cpu kernel
 * re-registered under the new name) whose hot kernels are kernels-cpu's, run on the WebAssembly
 * build of its C++ (module.ts), with their outputs in the module's memory.
 *
 * Storage: a tensor's data is either a plain JS array (what the user or a stock cpu kernel made) or
 * an allocation in the module's memory (what a native kernel made). The latter is read through a
 * view that is re-created when the memory grows (growth replaces the memory's ArrayBuffer and
 * detaches every view of the old one), handed out to the stock kernels as their input, and copied
 * when read out (dataSync), so that no caller ever holds a view of memory that is later freed.
 *
 * A native kernel runs with its outputs allocated in the module's memory. If the memory grew
 * during the call, a view the kernel's JavaScript held may have been detached in the middle of it:
 * the outputs are dropped and the call runs again, now in memory that has room for it.
 *
 * A tensor on a plain JS array (made by the user, loaded from a checkpoint, a model's initial
 * weights) moves into the module's memory the first time a native kernel reads it, and stays there:
 * otherwise every call would copy it in again (a forward + backward step of an E64 MoE layer copied
 * its 8 MiB expert weights four times). The move happens inside a native call only, never while a
 * JavaScript kernel may hold views of the memory that a growth could detach.
 */
import type * as tfjs from '@tensorflow/tfjs';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { nativeKernels, registerFusedGradients, withOutputAllocator } from '@moelab/kernels-cpu/kernels';
import { MOE_MLP_KERNEL } from '@moelab/core/kernels';
import type { WasmHeap, WasmKernels } from './module.js';

export const BACKEND_NAME = 'moelab-wasm';

type Values = tfjs.backend_util.BackendValues;
type View = Float32Array | Int32Array | Uint8Array;
type ViewCtor = Float32ArrayConstructor | Int32ArrayConstructor | Uint8ArrayConstructor;

/** A tensor's data in the module's memory (the cpu backend's TensorData shape, with `values` computed). */
interface WasmData {
  dtype: tfjs.DataType;
  refCount: number;
  values: Values;
  ptr: number;
}

const CTOR: Partial<Record<string, ViewCtor>> = { float32: Float32Array, int32: Int32Array, bool: Uint8Array };

function ctorOf(values: ArrayBufferView): ViewCtor | undefined {
  if (values instanceof Float32Array) return Float32Array;
  if (values instanceof Int32Array) return Int32Array;
  if (values instanceof Uint8Array) return Uint8Array;
  return undefined;
}

/** Plain arrays shorter than this stay plain: copying them per call costs less than a block of memory. */
export const ADOPT_MIN_ELEMENTS = 4096;

export class MoelabWasmBackend extends MathBackendCPU {
  private readonly heap: WasmHeap;
  // Addresses that a tensor's data owns (freed when its last reference is disposed).
  private readonly owned = new Set<number>();
  // Plain JS arrays that a tensor stores, to its data: moved into the module's memory on first use.
  private readonly plain = new WeakMap<ArrayBufferView, WasmData>();

  constructor(readonly kernels: WasmKernels) {
    super();
    // The banner advertises tfjs-node; this backend is the fast path.
    (this as unknown as { firstUse: boolean }).firstUse = false;
    this.heap = kernels.heap;
    kernels.adoptPlain = (v) => this.adoptPlain(v);
  }

  override write(values: Values, shape: number[], dtype: tfjs.DataType): object {
    const stored = this.adopt(values);
    const dataId = super.write(stored, shape, dtype);
    this.install(this.data.get(dataId) as unknown as WasmData, values, stored);
    return dataId;
  }

  override move(dataId: object, values: Values, shape: number[], dtype: tfjs.DataType, refCount: number): void {
    const stored = this.adopt(values);
    super.move(dataId, stored, shape, dtype, refCount);
    this.install(this.data.get(dataId) as unknown as WasmData, values, stored);
  }

  /**
   * Moves the plain array `v` of a tensor into the module's memory (see the file comment); returns
   * its address, or undefined when `v` is no tensor's (or small, or the memory is full: the caller
   * then copies it for the call, and reports the error if that fails too).
   */
  private adoptPlain(v: View): number | undefined {
    const data = this.plain.get(v);
    if (!data || data.ptr || data.values !== v) return undefined;
    let ptr: number;
    try {
      ptr = this.heap.alloc(v.byteLength, () => 'a tensor');
    } catch {
      return undefined;
    }
    new Uint8Array(this.heap.buffer).set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), ptr);
    const view = this.heap.view<View>(ctorOf(v)!, ptr, v.length);
    this.plain.delete(v);
    this.install(data, view, view);
    return ptr;
  }

  // dataSync/data/array: a copy, never a view of memory that is reused once the tensor is disposed.
  override readSync(dataId: object): Values {
    const d = this.data.get(dataId) as unknown as Partial<WasmData> | undefined;
    if (d?.ptr) return (d.values as View).slice();
    return super.readSync(dataId);
  }

  override disposeData(dataId: object, force = false): boolean {
    const d = this.data.get(dataId) as unknown as Partial<WasmData> | undefined;
    const deleted = super.disposeData(dataId, force);
    if (deleted && d && !d.ptr && ArrayBuffer.isView(d.values) && this.plain.get(d.values) === d) this.plain.delete(d.values);
    if (deleted && d?.ptr) {
      this.owned.delete(d.ptr);
      this.heap.free(d.ptr);
      d.ptr = 0;
    }
    return deleted;
  }

  /** Bytes of the module's memory (grown, not necessarily allocated). */
  heapBytes(): number {
    return this.heap.size;
  }

  /**
   * What a new tensor stores for `values`: a kernel output in the module's memory is taken over
   * as it is (returned unchanged: `entry` then records its address); any other view of that
   * memory (a subarray a stock kernel made, an input passed through) is copied out to a JS array.
   */
  private adopt(values: Values): Values {
    if (!ArrayBuffer.isView(values)) return values;
    const at = this.heap.addressOf(values);
    if (at !== undefined && !this.owned.has(at)) return values;
    if (at === undefined && values.buffer !== this.heap.buffer) return values;
    const Ctor = ctorOf(values);
    if (!Ctor) return (values as Float32Array).slice();
    // A view this heap made may be detached by now: read it again through its address.
    const source = at !== undefined ? this.heap.view<View>(Ctor, at, this.heap.lengthOf(values) ?? 0) : (values as View);
    return source.slice();
  }

  // A kernel output taken over as it is: the entry the cpu backend made reads it through a view
  // that follows the memory's growth, and remembers its address (freed in disposeData).
  private install(data: WasmData, original: Values, stored: Values): void {
    data.ptr = 0;
    const at = stored === original && ArrayBuffer.isView(original) ? this.heap.addressOf(original) : undefined;
    if (at === undefined) {
      // A plain array: moved into the module's memory when a native kernel first reads it.
      const plain = ArrayBuffer.isView(stored) && ctorOf(stored) !== undefined && (stored as View).length >= ADOPT_MIN_ELEMENTS;
      if (plain && (stored as View).buffer !== this.heap.buffer) this.plain.set(stored as View, data);
      return;
    }
    const Ctor = ctorOf(original as View) ?? CTOR[data.dtype];
    if (!Ctor) return;
    this.owned.add(at);
    data.ptr = at;
    const heap = this.heap;
    const length = heap.lengthOf(original as View) ?? 0;
    let view = original as View;
    let plain: Values | undefined;
    Object.defineProperty(data, 'values', {
      enumerable: true,
      configurable: true,
      get(): Values {
        if (plain !== undefined) return plain;
        if (view.buffer !== heap.buffer) view = heap.view<View>(Ctor, at, length);
        return view;
      },
      set(v: Values) {
        // Nothing in tfjs replaces a tensor's values today; should it, the new array is kept as a plain one.
        plain = v;
      },
    });
  }

  /**
   * Runs a native kernel with its outputs in the module's memory (see the file comment for why a
   * call can run twice).
   */
  runNative<T>(kernel: string, run: () => T): T {
    for (let attempt = 0; ; attempt++) {
      const buffer = this.heap.buffer;
      const fresh: number[] = [];
      let requested = 0;
      const alloc = (n: number): Float32Array => {
        const ptr = this.heap.alloc(n * 4, () => `an output of ${kernel} (${n} float32 values)`);
        fresh.push(ptr);
        requested += n * 4;
        return this.heap.view<Float32Array>(Float32Array, ptr, n);
      };
      let out: T;
      try {
        out = withOutputAllocator(alloc, run);
      } finally {
        // Outputs the kernel allocated but did not turn into tensors (an error, a discarded buffer).
        for (const p of fresh) if (!this.owned.has(p)) this.heap.free(p);
      }
      // Shared memory (the threaded build) grows in place: views of the old buffer stay valid.
      if (this.heap.buffer === buffer || this.heap.shared || attempt === 2) return out;
      for (const t of (Array.isArray(out) ? out : [out]) as tfjs.TensorInfo[]) this.disposeData(t.dataId, true);
      // Room for the whole call at once (the memory never shrinks), then run it again.
      this.heap.free(this.heap.alloc(requested * 2 + 2 ** 20, () => `the outputs of ${kernel}`));
    }
  }
}

let registeredWith: typeof tfjs | null = null;

/**
 * Registers `moelab-wasm` on `tf` (once): every cpu kernel under the new name, then kernels-cpu's
 * native kernels on the module, and the fused kernels' gradients.
 */
export function registerBackend(tf: typeof tfjs, kernels: WasmKernels, priority: number): void {
  if (registeredWith) return;
  const cpuKernels = tf.getKernelsForBackend('cpu');
  if (cpuKernels.length === 0) {
    throw new Error('tfjs-backend-cpu registered no kernels in this tfjs instance (import @tensorflow/tfjs, not @tensorflow/tfjs-core alone)');
  }
  tf.registerBackend(BACKEND_NAME, () => new MoelabWasmBackend(kernels), priority);
  for (const k of cpuKernels) {
    if (!tf.getKernel(k.kernelName, BACKEND_NAME)) tf.registerKernel({ ...k, backendName: BACKEND_NAME });
  }
  for (const k of nativeKernels(tf, kernels.addon, BACKEND_NAME)) {
    const { kernelName, kernelFunc } = k;
    if (tf.getKernel(kernelName, BACKEND_NAME)) tf.unregisterKernel(kernelName, BACKEND_NAME);
    tf.registerKernel({
      ...k,
      kernelFunc: (args) => (args.backend as unknown as MoelabWasmBackend).runNative(kernelName, () => kernelFunc(args)),
    });
  }
  if (!tf.getGradient(MOE_MLP_KERNEL)) registerFusedGradients(tf);
  registeredWith = tf;
}

/** The names of the kernels that run on the module (the rest are tfjs-backend-cpu's JavaScript). */
export function wasmKernelNames(tf: typeof tfjs, kernels: WasmKernels): string[] {
  return nativeKernels(tf, kernels.addon, BACKEND_NAME).map((k) => k.kernelName);
}
