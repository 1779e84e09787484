/**
 * The WebAssembly module (build/moelab-kernels.wasm: kernels-cpu's C++ kernels compiled by
 * Emscripten with SIMD128) and kernels-cpu's {@link NativeAddon} interface over it, so that
 * kernels-cpu's JavaScript kernel layer runs unchanged on it.
 *
 * Arrays cross into the module without a copy when they already live in its memory (every
 * kernel output and every tensor this backend stores, see backend.ts); any other array (a tensor
 * the user created from a JS array, a stock cpu kernel's output) is copied into a temporary
 * allocation for the call, and copied back when the function writes it.
 *
 * Memory: the module's memory grows on demand up to the wasm32 limit of 4 GiB. A failed
 * allocation, in JavaScript (moelab_malloc returns 0) or inside a kernel (exports.cc's operator new
 * calls back into MoelabOutOfMemory), becomes a one-line MoelabError with the size; the module
 * keeps working (the C++ stack pointer is restored).
 *
 * Two builds: `moelab-kernels` (single-threaded) and `moelab-kernels-threads` (pthreads: the
 * kernels' fork-join pool of kernels-cpu, pool.cc, on Web Workers or Node worker threads that
 * share the module's memory, a SharedArrayBuffer). The threaded one needs shared memory: always in
 * Node, in a browser only on a cross-origin isolated page. Its Workers are started with the module,
 * one per thread beyond the caller's, so the pool never waits for one to load.
 */
import { MoelabError } from '@moelab/core';
import type { NativeAddon, PackedWeightArrays } from '@moelab/kernels-cpu/kernels';

/** The functions and views of the Emscripten module this package builds (native/exports.cc). */
interface EmscriptenModule {
  HEAPU8: Uint8Array;
  /** The threaded build's shared memory (its `buffer` is current after a growth on any thread). */
  wasmMemory?: WebAssembly.Memory;
  /** The threaded build's Web Workers / Node worker threads. */
  PThread?: { unusedWorkers: { unref?: () => void }[]; runningWorkers: { unref?: () => void }[] };
  stackSave(): number;
  stackRestore(sp: number): void;
  UTF8ToString(ptr: number): string;
  _moelab_malloc(bytes: number): number;
  _moelab_free(ptr: number): number;
  _moelab_threads(): number;
  _moelab_set_threads(n: number): number;
  _moelab_worker_tasks(): number;
  [fn: `_${string}`]: (...args: number[]) => number;
}

/** Thrown by the module (through exports.cc's operator new) when a kernel's scratch allocation fails. */
class MoelabOutOfMemory {
  constructor(readonly bytes: number) {}
}

/** The wasm32 address space: the most the module's memory can grow to. */
export const MAX_MEMORY_BYTES = 4 * 2 ** 30;

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)} MiB`;

type View = Float32Array | Int32Array | Uint8Array;
type ViewCtor = Float32ArrayConstructor | Int32ArrayConstructor | Uint8ArrayConstructor;

/** The module's memory: allocation, typed views on it, and which views point where. */
export class WasmHeap {
  // Every view handed out, by identity, to its address: a view whose buffer was detached by a
  // memory growth still resolves (its own offset is then lost).
  private readonly where = new WeakMap<ArrayBufferView, { ptr: number; length: number }>();

  constructor(readonly mod: EmscriptenModule) {}

  /**
   * The memory's current buffer. Single-threaded: an ArrayBuffer, replaced (and the old one
   * detached) when the memory grows. Threaded: a SharedArrayBuffer; a growth (on any thread) gives
   * a longer one, and views of the old one stay valid but cannot reach the new part.
   */
  get buffer(): ArrayBufferLike {
    return this.mod.wasmMemory?.buffer ?? this.mod.HEAPU8.buffer;
  }

  /** True for the threaded build's shared memory (a growth detaches nothing). */
  get shared(): boolean {
    return typeof SharedArrayBuffer === 'function' && this.buffer instanceof SharedArrayBuffer;
  }

  /** Bytes of memory the module holds now (what it has grown to, not what is allocated). */
  get size(): number {
    return this.buffer.byteLength;
  }

  /** `bytes` of uninitialised memory; a MoelabError naming `what` when the memory cannot hold them. */
  alloc(bytes: number, what: () => string): number {
    const ptr = this.mod._moelab_malloc(Math.max(bytes, 1));
    if (!ptr) throw outOfMemory(bytes, what(), this.size);
    return ptr;
  }

  free(ptr: number): void {
    if (ptr) this.mod._moelab_free(ptr);
  }

  /** A typed view of `length` elements at `ptr` (remembered, so that it resolves back to `ptr`). */
  view<T extends View>(Ctor: ViewCtor, ptr: number, length: number): T {
    const v = new Ctor(this.buffer as ArrayBuffer, ptr, length) as T;
    this.where.set(v, { ptr, length });
    return v;
  }

  /** The address behind a view this heap handed out (also after the view was detached), else undefined. */
  addressOf(v: ArrayBufferView): number | undefined {
    return this.where.get(v)?.ptr;
  }

  /** The element count of a view this heap handed out (a detached view reports 0 itself). */
  lengthOf(v: ArrayBufferView): number | undefined {
    return this.where.get(v)?.length;
  }
}

/** The one-line error of a failed allocation. */
export function outOfMemory(bytes: number, what: string, heapBytes: number): MoelabError {
  return new MoelabError(
    `out of memory: ${what} needs ${mib(bytes)} and the WebAssembly memory (${mib(heapBytes)} now, at most ${mib(MAX_MEMORY_BYTES)}) cannot grow to hold it; use a smaller batch or model (or, in Node, the moelab-cpu backend)`,
    'moelab-wasm',
  );
}

// Per NativeAddon function: the argument positions it writes (copied back when they are plain JS arrays).
const OUTPUTS: Record<string, readonly number[]> = {
  sgemmBatched: [12],
  biasAct: [0],
  transpose: [1],
  mulBroadcast: [2],
  gather: [2],
  softmax: [1],
  topk: [1, 2],
  softmaxTopK: [2, 3],
  softmaxTopKGrad: [4],
  sigmoidTopK: [1, 2],
  sigmoidTopKGrad: [3],
  layerNormForward: [3, 4, 5],
  layerNormBackward: [5, 6, 7],
  adamw: [4, 5, 6],
  reduce: [1],
  segmentSum: [2],
  causalAttentionForward: [3, 4],
  cachedAttentionForward: [3],
  causalAttentionBackward: [6, 7, 8],
  rope: [3],
  moeMlpForward: [6, 7],
  moeMlpBackward: [8, 9, 10, 11],
  moeGluForward: [7, 8],
  moeGluBackward: [9, 10, 11, 12, 13],
  moePackedForward: [13, 14],
  moePackedBackward: [15, 16],
  moeLinearForward: [6],
  moeLinearBackward: [7, 8, 9],
};

// The exports whose JavaScript argument lists differ from the C ones: the C side also takes the
// lengths that Node-API reads off the arrays, and has no optional arguments.
const ADAPT: Record<string, (a: unknown[]) => unknown[]> = {
  biasAct: (a) => [a[0], a[1], a[2], a[3], a[4], a[5], a[6] ?? null],
  transpose: (a) => [...a.slice(0, 4), (a[2] as Int32Array).length],
  mulBroadcast: (a) => [...a.slice(0, 6), a[6] ?? 0, (a[3] as Int32Array).length],
  gather: (a) => [...a.slice(0, 6), (a[1] as Int32Array).length],
  adamw: (a) => [...a.slice(0, 8), Float32Array.from(a[8] as number[]), a[9]],
  // Packed expert weights come as { codes, scale, zero } objects (w3 null when ungated); the C
  // export takes the three arrays of each in a row.
  moePackedForward: (a) => [a[0], ...packedArgs(a.slice(1, 4)), ...a.slice(4)],
  moePackedBackward: (a) => [a[0], a[1], ...packedArgs(a.slice(2, 5)), ...a.slice(5)],
};

function packedArgs(weights: unknown[]): unknown[] {
  return weights.flatMap((w) => {
    const p = w as PackedWeightArrays | null;
    return p ? [p.codes, p.scale, p.zero] : [null, null, null];
  });
}

// The exports that validate indices and return an error message (or 0).
const CHECKED = new Set([
  'sgemmBatched',
  'softmaxTopK',
  'softmaxTopKGrad',
  'sigmoidTopK',
  'sigmoidTopKGrad',
  'moeMlpForward',
  'moeMlpBackward',
  'moeGluForward',
  'moeGluBackward',
  'moePackedForward',
  'moePackedBackward',
  'moeLinearForward',
  'moeLinearBackward',
]);

/** The loaded module: its heap and kernels-cpu's NativeAddon interface on it. */
export class WasmKernels {
  readonly heap: WasmHeap;
  readonly addon: NativeAddon;
  /**
   * Set by the backend: moves a plain JS array that a tensor stores into the module's memory for
   * good (the tensor then reads it there) and returns its address, or undefined when the array is
   * not a tensor's. Saves the copy per call for tensors that live long (weights, inputs).
   */
  adoptPlain: ((v: View) => number | undefined) | null = null;

  /**
   * @param maxThreads the most threads the module can run: 1 for the single-threaded build, the
   *   Workers it was started with + 1 for the threaded one (a pool never waits for a Worker to load).
   */
  constructor(
    readonly mod: EmscriptenModule,
    readonly maxThreads = 1,
  ) {
    this.heap = new WasmHeap(mod);
    const fns: Record<string, unknown> = {
      info: () => ({ gemm: 'builtin', haveBlas: false, threads: mod._moelab_threads() }),
      setThreads: (n: number) => this.setThreads(n),
      setGemm: () => 'builtin',
      tuneMalloc: () => false,
    };
    for (const name of Object.keys(OUTPUTS)) fns[name] = (...args: unknown[]) => this.call(name, args);
    this.addon = fns as unknown as NativeAddon;
  }

  /**
   * Sizes the kernels' thread pool (clamped to 1..maxThreads); returns the threads it now has.
   * Shrinking parks Workers instead of ending them, so a later call can grow the pool back at once,
   * without returning to the event loop (which a new Worker would need).
   */
  setThreads(n: number): number {
    const got = this.mod._moelab_set_threads(Math.max(1, Math.min(this.maxThreads, Math.floor(n) || 1)));
    // Node: the worker threads must not keep the process alive once the caller is done.
    for (const w of [...(this.mod.PThread?.unusedWorkers ?? []), ...(this.mod.PThread?.runningWorkers ?? [])]) w.unref?.();
    return got;
  }

  /**
   * Pool tasks that the Workers (not the calling thread) have run since the module started: whether
   * the threads take part. Stays 0 in the single-threaded build and with `setThreads(1)`.
   */
  workerTasks(): number {
    return this.mod._moelab_worker_tasks();
  }

  /** Calls export `name` with kernels-cpu's argument list (arrays become addresses). */
  call(name: string, jsArgs: unknown[]): number {
    const args = ADAPT[name]?.(jsArgs) ?? jsArgs;
    const outputs = OUTPUTS[name] ?? [];
    const { heap, mod } = this;
    const temps: number[] = [];
    const copyBack: [View, number][] = [];
    const sp = mod.stackSave();
    try {
      const cargs = args.map((a, i): number => {
        if (a === null || a === undefined) return 0;
        if (typeof a === 'boolean') return a ? 1 : 0;
        if (typeof a === 'number') return a;
        const v = a as View;
        const at = heap.addressOf(v);
        if (at !== undefined) return at;
        if (v.buffer === heap.buffer) return v.byteOffset; // a view of the memory made elsewhere (a subarray)
        const adopted = outputs.includes(i) ? undefined : this.adoptPlain?.(v);
        if (adopted !== undefined) return adopted;
        // A plain JS array: copied in (also when written: some outputs are read first, e.g. biasAct's).
        const ptr = heap.alloc(v.byteLength, () => `argument ${i} of ${name} (${v.length} elements)`);
        temps.push(ptr);
        new Uint8Array(heap.buffer).set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), ptr);
        if (outputs.includes(i)) copyBack.push([v, ptr]);
        return ptr;
      });
      const result = mod[`_${name}`](...cargs);
      for (const [v, ptr] of copyBack) new Uint8Array(v.buffer, v.byteOffset, v.byteLength).set(new Uint8Array(heap.buffer, ptr, v.byteLength));
      if (CHECKED.has(name) && result !== 0) throw new Error(`moelab-wasm: ${mod.UTF8ToString(result)}`);
      return result;
    } catch (e) {
      mod.stackRestore(sp);
      if (e instanceof MoelabOutOfMemory) throw outOfMemory(e.bytes, `the scratch memory of ${name}`, heap.size);
      throw e;
    } finally {
      for (const p of temps) heap.free(p);
    }
  }
}

/** What loadWasmKernels found: the module, or why there is none. */
export interface WasmLoad {
  kernels: WasmKernels | null;
  /** Why the module is missing; empty when it loaded. */
  reason: string;
  /** Which build runs: `threads` (pthreads, shared memory) or `single`. */
  build: 'threads' | 'single';
  /** Why the single-threaded build runs (empty when the threaded one does). */
  singleReason: string;
}

export interface LoadOptions {
  /**
   * Threads for the kernels. Default: the machine's cores (Node: `os.availableParallelism()` or
   * `MOELAB_THREADS`; browsers: `navigator.hardwareConcurrency`). 1 loads the single-threaded build.
   */
  threads?: number;
}

const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

// The built files, each named literally so that bundlers (Vite) emit them as assets.
const FILES = {
  single: { glue: new URL('../build/moelab-kernels.mjs', import.meta.url), wasm: new URL('../build/moelab-kernels.wasm', import.meta.url) },
  threads: {
    glue: new URL('../build/moelab-kernels-threads.mjs', import.meta.url),
    wasm: new URL('../build/moelab-kernels-threads.wasm', import.meta.url),
    // The Workers' script (CommonJS): browsers import its text from an ES module, Node runs the file.
    workerSource: new URL('../build/moelab-kernels-threads.worker-source.mjs', import.meta.url),
    nodeWorker: new URL('../build/moelab-kernels-threads.worker.cjs', import.meta.url),
  },
};
const RECORD = new URL('../build/moelab-wasm-build.json', import.meta.url);

// A variable specifier, so that browser bundlers leave Node's modules alone.
function nodeImport<T>(name: string): Promise<T> {
  return import(/* @vite-ignore */ name) as Promise<T>;
}

async function readBinary(file: URL): Promise<ArrayBuffer | Uint8Array> {
  if (isNode) {
    const fs = await nodeImport<typeof import('node:fs/promises')>('node:fs/promises');
    return fs.readFile(file);
  }
  const r = await fetch(file);
  if (!r.ok) throw new Error(`${file.href}: HTTP ${r.status}`);
  return r.arrayBuffer();
}

interface BuildRecord {
  ok?: boolean;
  reason?: string;
  how?: string;
  threads?: { ok?: boolean; reason?: string };
}

async function buildRecord(): Promise<BuildRecord | undefined> {
  try {
    return JSON.parse(new TextDecoder().decode(await readBinary(RECORD))) as BuildRecord;
  } catch {
    return undefined; // no record: the build never ran (or a bundler left it out)
  }
}

async function buildRecordReason(): Promise<string> {
  const record = await buildRecord();
  if (record?.ok === false && record.reason) return `the WebAssembly module was not built: ${record.reason}. ${record.how ?? ''}`.trim();
  return 'the WebAssembly module was not built (run `pnpm --filter @moelab/kernels-wasm build` with Emscripten installed: apt-get install -y emscripten)';
}

/** The machine's cores as the host reports them (at least 1). */
export async function defaultThreads(): Promise<number> {
  if (isNode) {
    const env = Number(process.env.MOELAB_THREADS);
    if (Number.isInteger(env) && env >= 1) return env;
    const os = await nodeImport<typeof import('node:os')>('node:os');
    return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
  }
  return Math.max(1, (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 1);
}

/** Why threads cannot run here (shared memory needs Node or a cross-origin isolated page), or ''. */
export function threadsUnavailableReason(): string {
  // Browsers hide SharedArrayBuffer on a page that is not isolated: say what to change.
  if (!isNode && (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated !== true) {
    return 'the page is not cross-origin isolated (serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)';
  }
  if (typeof SharedArrayBuffer !== 'function') return 'SharedArrayBuffer is missing here';
  return '';
}

async function instantiateSingle(): Promise<WasmKernels> {
  const binary = await readBinary(FILES.single.wasm);
  const factory = ((await import(/* @vite-ignore */ FILES.single.glue.href)) as { default: (m: object) => Promise<EmscriptenModule> }).default;
  const mod = await factory({ wasmBinary: binary, MoelabOutOfMemory, print: () => {}, printErr: () => {} });
  return new WasmKernels(mod, 1);
}

async function instantiateThreaded(threads: number): Promise<WasmKernels> {
  const binary = await readBinary(FILES.threads.wasm);
  const glue = FILES.threads.glue.href;
  const factory = ((await import(/* @vite-ignore */ glue)) as { default: (m: object) => Promise<EmscriptenModule> }).default;
  let nodeRequire: unknown;
  let worker: string;
  if (isNode) {
    nodeRequire = (await nodeImport<typeof import('node:module')>('node:module')).createRequire(import.meta.url);
    worker = (await nodeImport<typeof import('node:url')>('node:url')).fileURLToPath(FILES.threads.nodeWorker);
  } else {
    // A Blob URL of the worker script: a Worker started from it has this page's origin whatever a
    // bundler does with files (Vite inlines small ones as data: URLs, whose Workers have an opaque
    // origin, and its dev server rewrites scripts into ES modules).
    const source = ((await import(/* @vite-ignore */ FILES.threads.workerSource.href)) as { default: string }).default;
    worker = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
  }
  const mod = await factory({
    wasmBinary: binary,
    poolSize: threads - 1,
    // What each Worker imports (the glue, not the bundle that loaded it) and the worker script.
    mainScriptUrlOrBlob: glue,
    locateFile: (file: string) => (file.endsWith('.worker.js') ? worker : new URL(file, FILES.threads.glue).href),
    nodeRequire,
    MoelabOutOfMemory,
    print: () => {},
    printErr: () => {},
  });
  const kernels = new WasmKernels(mod, threads);
  kernels.setThreads(threads);
  return kernels;
}

const loading = new Map<string, Promise<WasmLoad>>();

/**
 * Loads and instantiates the module once per build and thread count; never rejects (`kernels:
 * null` with the reason instead). The threaded build runs when more than one thread is wanted and
 * shared memory is available; otherwise, or when it fails to load, the single-threaded one does,
 * and `singleReason` says why.
 */
export async function loadWasmKernels(options: LoadOptions = {}): Promise<WasmLoad> {
  const wanted = Math.min(64, Math.max(1, Math.floor(options.threads ?? (await defaultThreads()))));
  const envThreads = isNode ? process.env.MOELAB_THREADS : undefined;
  const oneThread = options.threads !== undefined ? 'one thread was asked for' : envThreads ? `MOELAB_THREADS=${envThreads}` : 'one core here';
  let singleReason = wanted === 1 ? oneThread : threadsUnavailableReason();
  if (!singleReason) {
    const key = `threads:${wanted}`;
    if (!loading.has(key)) {
      loading.set(
        key,
        instantiateThreaded(wanted).then(
          (kernels): WasmLoad => ({ kernels, reason: '', build: 'threads', singleReason: '' }),
          async (e: Error): Promise<WasmLoad> => {
            const record = await buildRecord();
            const why = record?.threads?.ok === false ? `it was not built: ${record.threads.reason}` : e.message;
            return { kernels: null, reason: `the threaded WebAssembly module failed to load (${why})`, build: 'threads', singleReason: '' };
          },
        ),
      );
    }
    const threaded = await loading.get(key)!;
    if (threaded.kernels) return threaded;
    singleReason = threaded.reason;
  }
  if (!loading.has('single')) {
    loading.set(
      'single',
      instantiateSingle().then(
        (kernels): WasmLoad => ({ kernels, reason: '', build: 'single', singleReason: '' }),
        async (e: Error): Promise<WasmLoad> => {
          const missing = (e as NodeJS.ErrnoException).code === 'ENOENT' || /HTTP 404/.test(e.message);
          return {
            kernels: null,
            reason: missing ? await buildRecordReason() : `the WebAssembly module failed to load (${e.message})`,
            build: 'single',
            singleReason: '',
          };
        },
      ),
    );
  }
  return { ...(await loading.get('single')!), singleReason };
}
