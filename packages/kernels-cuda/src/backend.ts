/**
 * The `moelab-cuda` tfjs backend: tensors live in device memory (one buffer per data id, from the
 * addon's caching allocator), kernels run on the GPU, and every kernel without a CUDA version runs
 * moelab-cpu's (or tfjs-cpu's) kernel on host copies: download the inputs, run, keep the outputs on
 * the host until a CUDA kernel needs them. Each such fallback is counted by kernel name
 * ({@link fallbackCounts}), so a missing kernel is visible, never silent.
 *
 * Storage is lazy in both directions: a tensor written from JavaScript is uploaded on its first
 * CUDA use, a CUDA kernel's output is downloaded on its first read (or fallback use), and both
 * copies are kept afterwards (tensors are immutable). The same class, on the emulation addon, is
 * the `moelab-cuda-emu` backend that the tests run without a GPU.
 */
import * as tfjs from '@tensorflow/tfjs';
import type { CudaAddon, Ptr } from './native.js';

type DataType = tfjs.DataType;
type BackendValues = tfjs.backend_util.BackendValues;
type TensorInfo = tfjs.TensorInfo;

/** Bytes per element of the dtypes kept on the device (string and complex64 stay on the host). */
export function deviceBytes(dtype: DataType): number {
  return dtype === 'float32' || dtype === 'int32' ? 4 : dtype === 'bool' ? 1 : 0;
}

function emptyValues(dtype: DataType, n: number): BackendValues {
  if (dtype === 'int32') return new Int32Array(n);
  if (dtype === 'bool') return new Uint8Array(n);
  return new Float32Array(n);
}

// The typed array the device copy of `dtype` is made from (tfjs-cpu may keep e.g. a Uint8Array behind a float32 Cast of bool).
function asDeviceArray(values: BackendValues, dtype: DataType): ArrayBufferView {
  if (dtype === 'float32') return values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
  if (dtype === 'int32') return values instanceof Int32Array ? values : Int32Array.from(values as ArrayLike<number>);
  return values instanceof Uint8Array ? values : Uint8Array.from(values as ArrayLike<number>);
}

interface Entry {
  shape: number[];
  dtype: DataType;
  size: number;
  /** Device buffer (0: none yet, or an empty tensor). */
  ptr: Ptr;
  onDevice: boolean;
  host: BackendValues | null;
  refCount: number;
}

const counts = new Map<string, Map<string, number>>();

/** How often each kernel fell back to the host since the last reset, per backend name (`moelab-cuda` by default). */
export function fallbackCounts(backendName = 'moelab-cuda'): Record<string, number> {
  return Object.fromEntries([...(counts.get(backendName) ?? new Map<string, number>())].sort((a, b) => b[1] - a[1]));
}

/** Forget the fallback counts of `backendName` (all backends when omitted). */
export function resetFallbackCounts(backendName?: string): void {
  if (backendName === undefined) counts.clear();
  else counts.delete(backendName);
}

export function noteFallback(backendName: string, kernel: string): void {
  let m = counts.get(backendName);
  if (!m) {
    m = new Map();
    counts.set(backendName, m);
  }
  m.set(kernel, (m.get(kernel) ?? 0) + 1);
}

export class MoelabCudaBackend extends tfjs.KernelBackend {
  private readonly entries = new Map<object, Entry>();

  constructor(
    readonly native: CudaAddon,
    readonly name: string,
  ) {
    super();
  }

  override write(values: BackendValues, shape: number[], dtype: DataType): object {
    const dataId = {};
    this.entries.set(dataId, { shape: shape.slice(), dtype, size: tfjs.util.sizeFromShape(shape), ptr: 0, onDevice: false, host: values, refCount: 1 });
    return dataId;
  }

  override move(dataId: object, values: BackendValues, shape: number[], dtype: DataType, refCount: number): void {
    this.entries.set(dataId, { shape: shape.slice(), dtype, size: tfjs.util.sizeFromShape(shape), ptr: 0, onDevice: false, host: values, refCount });
  }

  /** A tensor info for new storage: `values` on the host, or (without values) a fresh uninitialised device buffer. */
  makeTensorInfo(shape: number[], dtype: DataType, values?: BackendValues): TensorInfo {
    if (values !== undefined) return { dataId: this.write(values, shape, dtype), shape, dtype };
    return this.makeOutput(shape, dtype).info;
  }

  /** A fresh device buffer for a kernel output (every element must be written by the kernel). */
  makeOutput(shape: number[], dtype: DataType): { info: TensorInfo; ptr: Ptr } {
    const size = tfjs.util.sizeFromShape(shape);
    const bytes = size * deviceBytes(dtype);
    const ptr = bytes > 0 ? this.native.alloc(bytes) : 0;
    const dataId = {};
    this.entries.set(dataId, { shape: shape.slice(), dtype, size, ptr, onDevice: true, host: size === 0 ? emptyValues(dtype, 0) : null, refCount: 1 });
    return { info: { dataId, shape, dtype }, ptr };
  }

  // A data id this backend does not hold lives on another backend: the engine moves it here (it
  // reads the values there and calls move()), as tfjs's DataStorage does for the stock backends.
  private entry(dataId: object): Entry {
    let e = this.entries.get(dataId);
    if (!e && tfjs.engine().state.tensorInfo.has(dataId)) {
      tfjs.engine().moveData(this, dataId);
      e = this.entries.get(dataId);
    }
    if (!e) throw new Error(`${this.name}: a tensor's storage was already disposed`);
    return e;
  }

  /** The device buffer of `t`, uploaded on first use. */
  dev(t: TensorInfo): Ptr {
    const e = this.entry(t.dataId);
    if (!e.onDevice) {
      const bytes = e.size * deviceBytes(e.dtype);
      if (bytes === 0 && e.size > 0) throw new Error(`${this.name}: ${e.dtype} tensors stay on the host`);
      if (bytes > 0) {
        e.ptr = this.native.alloc(bytes);
        this.native.upload(e.ptr, asDeviceArray(e.host as BackendValues, e.dtype));
      }
      e.onDevice = true;
    }
    return e.ptr;
  }

  /** The host values of `t`, downloaded on first use. */
  host(t: TensorInfo | object): BackendValues {
    const e = this.entry('dataId' in t ? (t as TensorInfo).dataId : t);
    if (e.host === null) {
      const out = emptyValues(e.dtype, e.size);
      this.native.download(e.ptr, out as ArrayBufferView);
      e.host = out;
    }
    return e.host;
  }

  override readSync(dataId: object): BackendValues {
    return this.host(dataId);
  }

  override async read(dataId: object): Promise<BackendValues> {
    return this.host(dataId);
  }

  override disposeData(dataId: object, force = false): boolean {
    const e = this.entries.get(dataId);
    if (!e) return true;
    if (!force) {
      e.refCount--;
      if (e.refCount > 0) return false;
    }
    if (e.ptr) this.native.free(e.ptr, e.size * deviceBytes(e.dtype));
    this.entries.delete(dataId);
    return true;
  }

  override incRef(dataId: object): void {
    const e = this.entries.get(dataId);
    if (e) e.refCount++;
  }

  override refCount(dataId: object): number {
    return this.entries.get(dataId)?.refCount ?? 0;
  }

  override numDataIds(): number {
    return this.entries.size;
  }

  override memory(): { unreliable: boolean; reasons?: string[] } & Record<string, number | boolean | string[]> {
    const m = this.native.memory();
    return { unreliable: false, numBytesInGPU: m.liveBytes, numBytesInGPUCached: m.cachedBytes };
  }

  override timerAvailable(): boolean {
    return true;
  }

  override async time(f: () => void): Promise<tfjs.BackendTimingInfo> {
    const start = performance.now();
    f();
    this.native.sync();
    return { kernelMs: performance.now() - start };
  }

  override floatPrecision(): 32 {
    return 32;
  }

  override epsilon(): number {
    return 1e-7;
  }

  override dispose(): void {
    for (const id of [...this.entries.keys()]) this.disposeData(id, true);
  }
}
