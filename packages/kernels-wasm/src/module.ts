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
 */
import { MoelabError } from '@moelab/core';
import type { NativeAddon } from '@moelab/kernels-cpu/kernels';

/** The functions and views of the Emscripten module this package builds (native/exports.cc). */
interface EmscriptenModule {
  HEAPU8: Uint8Array;
  stackSave(): number;
  stackRestore(sp: number): void;
  UTF8ToString(ptr: number): string;
  _moelab_malloc(bytes: number): number;
  _moelab_free(ptr: number): number;
  _moelab_threads(): number;
  _moelab_set_threads(n: number): number;
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

  /** The memory's current ArrayBuffer (replaced, and the old one detached, when the memory grows). */
  get buffer(): ArrayBufferLike {
    return this.mod.HEAPU8.buffer;
  }

  /** Bytes of memory the module holds now (what it has grown to, not what is allocated). */
  get size(): number {
    return this.mod.HEAPU8.byteLength;
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
    const v = new Ctor(this.mod.HEAPU8.buffer as ArrayBuffer, ptr, length) as T;
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
};

// The exports that validate indices and return an error message (or 0).
const CHECKED = new Set([
  'sgemmBatched',
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

  constructor(readonly mod: EmscriptenModule) {
    this.heap = new WasmHeap(mod);
    const fns: Record<string, unknown> = {
      info: () => ({ gemm: 'builtin', haveBlas: false, threads: mod._moelab_threads() }),
      setThreads: (n: number) => mod._moelab_set_threads(n),
      setGemm: () => 'builtin',
      tuneMalloc: () => false,
    };
    for (const name of Object.keys(OUTPUTS)) fns[name] = (...args: unknown[]) => this.call(name, args);
    this.addon = fns as unknown as NativeAddon;
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
        // A plain JS array: copied in (also when written: some outputs are read first, e.g. biasAct's).
        const ptr = heap.alloc(v.byteLength, () => `argument ${i} of ${name} (${v.length} elements)`);
        temps.push(ptr);
        mod.HEAPU8.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), ptr);
        if (outputs.includes(i)) copyBack.push([v, ptr]);
        return ptr;
      });
      const result = mod[`_${name}`](...cargs);
      for (const [v, ptr] of copyBack) new Uint8Array(v.buffer, v.byteOffset, v.byteLength).set(mod.HEAPU8.subarray(ptr, ptr + v.byteLength));
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
  reason: string;
}

const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';
// The built module, next to src/ and dist/ alike.
const BUILD = new URL('../build/', import.meta.url);

async function readBinary(file: URL): Promise<ArrayBuffer | Uint8Array> {
  if (isNode) {
    // A variable specifier, so that browser bundlers leave the Node module alone.
    const fsName = 'node:fs/promises';
    const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
    return fs.readFile(file);
  }
  const r = await fetch(file);
  if (!r.ok) throw new Error(`${file.href}: HTTP ${r.status}`);
  return r.arrayBuffer();
}

async function buildRecordReason(): Promise<string> {
  try {
    const text = new TextDecoder().decode(await readBinary(new URL('moelab-wasm-build.json', BUILD)));
    const record = JSON.parse(text) as { ok?: boolean; reason?: string; how?: string };
    if (record.ok === false && record.reason) return `the WebAssembly module was not built: ${record.reason}. ${record.how ?? ''}`.trim();
  } catch {
    /* no record: the build never ran */
  }
  return 'the WebAssembly module was not built (run `pnpm --filter @moelab/kernels-wasm build` with Emscripten installed: apt-get install -y emscripten)';
}

let loading: Promise<WasmLoad> | undefined;

/** Loads and instantiates the module once; never rejects (`kernels: null` with the reason instead). */
export function loadWasmKernels(): Promise<WasmLoad> {
  loading ??= (async (): Promise<WasmLoad> => {
    let binary: ArrayBuffer | Uint8Array;
    try {
      binary = await readBinary(new URL('moelab-kernels.wasm', BUILD));
    } catch {
      return { kernels: null, reason: await buildRecordReason() };
    }
    try {
      const glue = new URL('moelab-kernels.mjs', BUILD).href;
      const factory = ((await import(/* @vite-ignore */ glue)) as { default: (m: object) => Promise<EmscriptenModule> }).default;
      const mod = await factory({ wasmBinary: binary, MoelabOutOfMemory, print: () => {}, printErr: () => {} });
      return { kernels: new WasmKernels(mod), reason: '' };
    } catch (e) {
      return { kernels: null, reason: `the WebAssembly module failed to load (${(e as Error).message})` };
    }
  })();
  return loading;
}
