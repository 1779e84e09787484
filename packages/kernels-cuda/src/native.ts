/**
 * Loads moelab-cuda's addons (build/moelab_cuda.node for the device, build/moelab_cuda_emu.node for
 * the CPU emulation of the launch grid) once each. Never throws: a missing addon or an unusable
 * device comes back as `{ addon: null, reason }` with the build record's reason
 * (build/moelab-cuda-build.json, written by scripts/build-native.mjs) and what to do.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** A device buffer's address (0 for an empty tensor). */
export type Ptr = number;

/**
 * An attention launch: query head h of H reads key / value head floor(h Hkv / H); query row i sees
 * keys j <= qOffset + i; tensors [B, H, T, d], or [B, T, H, d] when bthd.
 */
export interface AttentionShape {
  H: number;
  Hkv: number;
  Tq: number;
  Tk: number;
  dk: number;
  dv: number;
  qOffset: number;
  bthd: boolean;
  scale: number;
}

/** The functions the addon exports (see src/native/addon.cc and kernels.h for the argument contracts). */
export interface CudaAddon {
  emulated: boolean;
  /** '' when the device is usable, else why not (no driver, driver older than the runtime, compute capability below 8.0). */
  status(): string;
  info(): {
    emulated: boolean;
    name: string;
    major: number;
    minor: number;
    totalBytes: number;
    freeBytes: number;
    driverVersion: number;
    runtimeVersion: number;
  };
  setTf32(on: boolean): boolean;
  alloc(bytes: number): Ptr;
  free(p: Ptr, bytes: number): void;
  upload(p: Ptr, values: ArrayBufferView): void;
  download(p: Ptr, out: ArrayBufferView): void;
  copy(dst: Ptr, src: Ptr, bytes: number): void;
  sync(): void;
  memory(): { liveBytes: number; cachedBytes: number; liveBuffers: number };
  releaseCached(): void;
  gemm(
    ta: boolean,
    tb: boolean,
    batch: number,
    M: number,
    N: number,
    K: number,
    A: Ptr,
    strideA: number,
    B: Ptr,
    strideB: number,
    C: Ptr,
    bias: Ptr | null,
    act: number,
    alpha: number,
  ): void;
  /** op: BINARY_OP_CODE (comparisons write bool) or the kernels' own 11 maximum, 12 minimum, 13 pow; float32 or int32 operands. */
  binary(a: Ptr, b: Ptr, out: Ptr, n: number, shape: Int32Array, aStrides: Int32Array, bStrides: Int32Array, op: number, isInt: boolean): void;
  /** out[offset(i, outStrides)] = x[offset(i, xStrides)] over the index space `shape` (rank <= 6); elements of 4 or 1 bytes. */
  stridedCopy(x: Ptr, out: Ptr, n: number, shape: Int32Array, xStrides: Int32Array, outStrides: Int32Array, elemBytes: number): void;
  /** out[i] = cond[i] ? t[i] : e[i] (4-byte elements). */
  select(cond: Ptr, t: Ptr, e: Ptr, out: Ptr, n: number): void;
  range(out: Ptr, n: number, start: number, step: number, isInt: boolean): void;
  /** lse: [B, H, Tq], or null. */
  attentionForward(q: Ptr, k: Ptr, v: Ptr, out: Ptr, lse: Ptr | null, B: number, shape: AttentionShape): void;
  attentionBackward(dy: Ptr, q: Ptr, k: Ptr, v: Ptr, out: Ptr, lse: Ptr, dq: Ptr, dk: Ptr, dv: Ptr, B: number, shape: AttentionShape): void;
  rope(x: Ptr, cos: Ptr, sin: Ptr, out: Ptr, BH: number, H: number, T: number, dh: number, dims: number, inverse: boolean, bthd: boolean): void;
  moeGluForward(
    x: Ptr,
    w1: Ptr,
    w3: Ptr,
    w2: Ptr,
    tok: Ptr,
    expert: Ptr,
    weight: Ptr,
    out: Ptr,
    hidden: Ptr,
    T: number,
    d: number,
    h: number,
    E: number,
    N: number,
    act: number,
  ): void;
  moeGluBackward(
    dy: Ptr,
    x: Ptr,
    w1: Ptr,
    w3: Ptr,
    w2: Ptr,
    tok: Ptr,
    expert: Ptr,
    weight: Ptr,
    hidden: Ptr,
    dx: Ptr,
    dw1: Ptr,
    dw3: Ptr,
    dw2: Ptr,
    dweight: Ptr,
    T: number,
    d: number,
    h: number,
    E: number,
    N: number,
    act: number,
  ): void;
  /** packed: [w1Codes, w1Scale, w1Zero, w3Codes|null, w3Scale|null, w3Zero|null, w2Codes, w2Scale, w2Zero, bits, group]. */
  moePackedForward(
    packed: (Ptr | null)[],
    x: Ptr,
    tok: Ptr,
    expert: Ptr,
    weight: Ptr,
    out: Ptr,
    hidden: Ptr,
    T: number,
    d: number,
    h: number,
    E: number,
    N: number,
    act: number,
  ): void;
  moePackedBackward(
    packed: (Ptr | null)[],
    dy: Ptr,
    x: Ptr,
    tok: Ptr,
    expert: Ptr,
    weight: Ptr,
    hidden: Ptr,
    dx: Ptr,
    dweight: Ptr,
    T: number,
    d: number,
    h: number,
    E: number,
    N: number,
    act: number,
  ): void;
  unary(x: Ptr, out: Ptr, n: number, op: number, alpha: number): void;
  fill(out: Ptr, n: number, value: number): void;
  /** kind: 0 int32 -> float32, 1 float32 -> int32 (truncation), 2 bool -> float32. */
  cast(x: Ptr, out: Ptr, n: number, kind: number): void;
  reduce(x: Ptr, out: Ptr, outer: number, R: number, inner: number, kind: number): void;
  /** Returns the position of the first out-of-range index seen, or -1. */
  gather(x: Ptr, idx: Ptr, out: Ptr, outer: number, dim: number, inner: number, nIdx: number, isInt: boolean): number;
  segmentSum(x: Ptr, ids: Ptr, out: Ptr, n: number, inner: number, numSegments: number): void;
  softmax(x: Ptr, out: Ptr, rows: number, cols: number): void;
  topk(x: Ptr, values: Ptr, indices: Ptr, rows: number, cols: number, k: number): void;
  /** core's MoelabSoftmaxTopK: weight, expert slot-major [k, T]. */
  softmaxTopK(scores: Ptr, bias: Ptr | null, weight: Ptr, expert: Ptr, T: number, E: number, k: number, renormalize: boolean): void;
  softmaxTopKGrad(dy: Ptr, scores: Ptr, weight: Ptr, expert: Ptr, dscores: Ptr, T: number, E: number, k: number, renormalize: boolean): void;
  layerNormForward(x: Ptr, gamma: Ptr, beta: Ptr | null, y: Ptr, mean: Ptr, rstd: Ptr, rows: number, D: number, eps: number): void;
  layerNormBackward(dy: Ptr, x: Ptr, gamma: Ptr, mean: Ptr, rstd: Ptr, dx: Ptr, dgamma: Ptr, dbeta: Ptr | null, rows: number, D: number): void;
  adamw(p: Ptr, g: Ptr, m: Ptr, v: Ptr, pOut: Ptr, mOut: Ptr, vOut: Ptr, n: number, scalars: number[], decay: boolean): void;
  moeMlpForward(
    x: Ptr,
    w1: Ptr,
    w2: Ptr,
    tok: Ptr,
    expert: Ptr,
    weight: Ptr,
    out: Ptr,
    hidden: Ptr,
    T: number,
    d: number,
    h: number,
    E: number,
    N: number,
    act: number,
  ): void;
  moeMlpBackward(
    dy: Ptr,
    x: Ptr,
    w1: Ptr,
    w2: Ptr,
    tok: Ptr,
    expert: Ptr,
    weight: Ptr,
    hidden: Ptr,
    dx: Ptr,
    dw1: Ptr,
    dw2: Ptr,
    dweight: Ptr,
    T: number,
    d: number,
    h: number,
    E: number,
    N: number,
    act: number,
  ): void;
  moeLinearForward(
    x: Ptr,
    w: Ptr,
    inRow: Ptr,
    outRow: Ptr,
    expert: Ptr,
    weight: Ptr,
    out: Ptr,
    R: number,
    din: number,
    dout: number,
    E: number,
    N: number,
    outRows: number,
  ): void;
  moeLinearBackward(
    dy: Ptr,
    x: Ptr,
    w: Ptr,
    inRow: Ptr,
    outRow: Ptr,
    expert: Ptr,
    weight: Ptr,
    dx: Ptr,
    dw: Ptr,
    dweight: Ptr,
    R: number,
    din: number,
    dout: number,
    E: number,
    N: number,
    outRows: number,
  ): void;
}

/** Which addon: the device build (nvcc) or the emulation build (g++). */
export type AddonKind = 'device' | 'emulation';

const FILES: Record<AddonKind, string> = { device: 'moelab_cuda.node', emulation: 'moelab_cuda_emu.node' };

/** What to run to (re)build the addons. */
export const HOW_TO_BUILD =
  'The device addon needs the CUDA toolkit (nvcc 12.x or 13.x on PATH, or CUDA_HOME) and g++ at install time, then `pnpm rebuild @moelab/kernels-cuda` (npm: `npm rebuild @moelab/kernels-cuda`); the emulation addon needs g++ only.';

interface BuildRecord {
  emulation?: { ok: boolean; reason?: string };
  device?: { ok: boolean; reason?: string };
}

function buildRecord(): BuildRecord | null {
  try {
    return JSON.parse(readFileSync(fileURLToPath(new URL('../build/moelab-cuda-build.json', import.meta.url)), 'utf8')) as BuildRecord;
  } catch {
    return null;
  }
}

const loaded = new Map<AddonKind, { addon: CudaAddon | null; reason: string }>();

/** The addon of `kind`, or null with the reason (one line) and how to fix it. A device addon whose device does not answer counts as unavailable. */
export function loadAddon(kind: AddonKind): { addon: CudaAddon | null; reason: string } {
  const cached = loaded.get(kind);
  if (cached) return cached;
  const result = load(kind);
  loaded.set(kind, result);
  return result;
}

function load(kind: AddonKind): { addon: CudaAddon | null; reason: string } {
  const file = fileURLToPath(new URL(`../build/${FILES[kind]}`, import.meta.url));
  if (!existsSync(file)) {
    const record = buildRecord();
    const why = record?.[kind]?.reason;
    if (why) return { addon: null, reason: `the ${kind} addon was not built: ${why}` };
    return { addon: null, reason: `the ${kind} addon was not built (its install script never ran or was blocked). ${HOW_TO_BUILD}` };
  }
  let addon: CudaAddon;
  try {
    addon = createRequire(import.meta.url)(file) as CudaAddon;
  } catch (e) {
    return { addon: null, reason: `the ${kind} addon failed to load (${(e as Error).message.split('\n')[0]}). ${HOW_TO_BUILD}` };
  }
  const status = addon.status();
  if (status) return { addon: null, reason: status };
  return { addon, reason: '' };
}
