/**
 * Output storage for the native kernels: uninitialised buffers, recycled through a size-keyed pool
 * once their tensor is disposed, and the bookkeeping that makes recycling (and AdamW's in-place
 * update) safe in a tensor library whose tensors are immutable.
 *
 * Why a pool: a training step allocates its activations and gradients afresh every step (GBs of
 * ArrayBuffers per step on the benchmark LMs). Each one is a malloc, its pages fault in on first
 * write, and V8 counts it as external memory, which triggers garbage collections whose background
 * marking threads then compete with the kernels' threads for the cores (measured: ~10% of a dense
 * LM step on 2 cores). Shapes repeat exactly from step to step, so buffers freed by one step serve
 * the next (PyTorch's GPU caching allocator works on the same observation).
 *
 * Why it is safe: the cpu backend hands its storage out freely (dataSync returns the array itself;
 * a contiguous Slice wraps a view of it in a new tensor; tf.tensor keeps the caller's array). So a
 * buffer is reused or overwritten only while it is *owned*: allocated here, wrapped by exactly one
 * tensor (one dataId; reshapes share it and are counted by the backend's refCount), and never read
 * out or wrapped again since. The backend reports each of those events (backend.ts); an exposed
 * buffer is simply left to the garbage collector.
 */

/** Below this many floats a buffer is a plain Float32Array (V8 allocates those cheaply) and is not pooled. */
const MIN_POOLED = 16384;

type State = 'fresh' | 'owned';
// fresh: handed to a kernel, not yet wrapped by a tensor; owned: wrapped by one tensor, unseen.
const states = new WeakMap<ArrayBufferLike, State>();
const pool = new Map<number, Float32Array[]>();
let pooledBytes = 0;
let capBytes = defaultCap();

function defaultCap(): number {
  // (No `process` in a browser, where kernels-wasm runs these kernels.)
  const env = typeof process === 'undefined' ? undefined : process.env.MOELAB_POOL_MB;
  if (env !== undefined && env !== '' && Number.isFinite(Number(env))) return Math.max(0, Number(env)) * 2 ** 20;
  return 2 * 2 ** 30;
}

/**
 * A Float32Array of n floats for a kernel output that the native code overwrites completely:
 * from the pool when a buffer of that size is free, else uninitialised from
 * Buffer.allocUnsafeSlow (its own ArrayBuffer of exactly n floats). `new Float32Array(n)` would
 * zero-fill: a second pass over memory the kernel writes anyway (~10% of a 4096x256x256 GEMM).
 * Only for kernels that write every element.
 */
export function outputArray(n: number): Float32Array {
  if (allocator) return allocator(n);
  const free = n < MIN_POOLED ? undefined : pool.get(n);
  let out = free?.pop();
  if (out) {
    pooledBytes -= out.byteLength;
    if (free!.length === 0) pool.delete(n);
  } else {
    out = n < MIN_POOLED ? new Float32Array(n) : new Float32Array(Buffer.allocUnsafeSlow(n * 4).buffer, 0, n);
  }
  states.set(out.buffer, 'fresh');
  return out;
}

// Another backend running these kernels on its own storage (kernels-wasm: the module's memory).
let allocator: ((n: number) => Float32Array) | null = null;

/**
 * Runs `fn` (a kernel call) with every outputArray served by `alloc` instead of this pool: how the
 * moelab-wasm backend runs these kernels with their outputs in the WebAssembly module's memory.
 * Kernels are synchronous, so the switch covers exactly one kernel call.
 */
export function withOutputAllocator<T>(alloc: (n: number) => Float32Array, fn: () => T): T {
  const previous = allocator;
  allocator = alloc;
  try {
    return fn();
  } finally {
    allocator = previous;
  }
}

/** A tensor is being created on `values` (backend.write): the first wrap of a fresh buffer owns it; any other exposes it. */
export function noteWrap(values: unknown): void {
  if (!ArrayBuffer.isView(values)) return;
  if (states.get(values.buffer) === 'fresh') states.set(values.buffer, 'owned');
  else states.delete(values.buffer);
}

/** `values` was read out of its tensor (dataSync, data, array...): never reuse or overwrite it. */
export function noteRead(values: unknown): void {
  if (ArrayBuffer.isView(values)) states.delete(values.buffer);
}

/** Whether `values` is a whole owned buffer: its tensor is the only thing that can see it. */
export function isOwned(values: unknown): values is Float32Array {
  return values instanceof Float32Array && states.get(values.buffer) === 'owned' && values.byteOffset === 0 && values.byteLength === values.buffer.byteLength;
}

/** The tensor that owned `values` was disposed (refCount 0): keep the buffer for the next outputArray of its size. */
export function noteDisposed(values: unknown): void {
  if (!isOwned(values)) return;
  states.delete(values.buffer);
  if (values.length < MIN_POOLED || values.byteLength > capBytes) return;
  // Over the cap: drop the least recently pooled sizes first (a Map iterates in insertion order).
  for (const [n, list] of pool) {
    if (pooledBytes + values.byteLength <= capBytes) break;
    pooledBytes -= n * 4 * list.length;
    pool.delete(n);
  }
  const list = pool.get(values.length) ?? [];
  list.push(values);
  pool.delete(values.length); // re-inserted last: most recently used
  pool.set(values.length, list);
  pooledBytes += values.byteLength;
}

/** Bytes held by free buffers waiting for reuse. */
export function pooledStorageBytes(): number {
  return pooledBytes;
}

/**
 * Release the free buffers (to the garbage collector) and set the pool's cap in bytes (default
 * 2 GiB, or MOELAB_POOL_MB; 0 disables pooling). Live tensors are not affected.
 */
export function releasePooledStorage(cap = capBytes): void {
  pool.clear();
  pooledBytes = 0;
  capBytes = Math.max(0, cap);
}
