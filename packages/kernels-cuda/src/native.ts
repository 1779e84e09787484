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
 * An attention launch: B batches; query head h of H reads key / value head floor(h Hkv / H); query
 * row i sees keys j <= qOffset + i; tensors [B, H, T, d], or [B, T, H, d] when bthd.
 */
export interface AttentionShape {
  B: number;
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

/**
 * Device buffers by name: the kernel contract's input and output names (`x`, `w1`, `tokenIndex`,
 * `dy`, `dx`, ...). null (or leaving it out) marks an absent optional buffer.
 */
export type Buffers<K extends string> = Record<K, Ptr> & { [name: string]: Ptr | null };

/** The forward kernel or its backward. */
export type Pass = 'forward' | 'backward';

/**
 * An index space of rank <= 6 (`shape`) and two operands' strides over it (elements; 0 along
 * broadcast axes). What `b` means is the function's: out's strides for a copy, x's shape for a tile.
 */
export interface IndexSpace {
  shape: readonly number[];
  a: readonly number[];
  b?: readonly number[];
}

/** The sizes every fused MoE expert launch shares (core's MoelabMoeMLP / GLU / Packed). */
export interface MoeDims {
  /** tokens, their channels, expert hidden units, experts, assignments */
  T: number;
  d: number;
  h: number;
  E: number;
  N: number;
  /** MOE_ACTIVATION_CODE */
  act: number;
  /** packed experts only: code width and quantization group (0: one group over the input axis) */
  bits?: number;
  group?: number;
}

/** The addon's functions (src/native/addon.cc; argument contracts in kernels.h). */
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
  /** C[b] = act(op(A[b]) op(B[b]) + bias): A [M, K] ([K, M] when ta), B [K, N] ([N, K] when tb); batch strides in elements, 0 broadcasts. */
  gemm(
    buffers: Buffers<'A' | 'B' | 'C'>,
    dims: { ta: boolean; tb: boolean; batch: number; M: number; N: number; K: number; strideA: number; strideB: number; act: number; alpha: number },
  ): void;
  /** op: BINARY_OP_CODE (comparisons write bool) or the kernels' own 11 maximum, 12 minimum, 13 pow; float32 or int32 operands over `space` (a: a's strides, b: b's). */
  binary(a: Ptr, b: Ptr, out: Ptr, space: IndexSpace, op: number, isInt: boolean): void;
  /** out[offset(i, space.b)] = x[offset(i, space.a)] over the index space; elements of 4 or 1 bytes. */
  stridedCopy(x: Ptr, out: Ptr, space: IndexSpace, elemBytes: number): void;
  /** out[i] = cond[offset(i, space.a)] ? t[i] : e[i] over the values' index space; elements of 4 or 1 bytes. */
  select(cond: Ptr, t: Ptr, e: Ptr, out: Ptr, space: IndexSpace, elemBytes: number): void;
  /** Tile: out (index space space.shape) repeats x of shape space.b and strides space.a. */
  tile(x: Ptr, out: Ptr, space: IndexSpace, elemBytes: number): void;
  /** The running sum (product) of x viewed as [outer, R, inner] along R, float32 or int32. */
  scan(x: Ptr, out: Ptr, dims: { outer: number; R: number; inner: number; product: boolean; exclusive: boolean; reverse: boolean; isInt: boolean }): void;
  range(out: Ptr, n: number, start: number, step: number, isInt: boolean): void;
  /** Forward: q, k, v, out and lse [B, H, Tq] (null: not wanted); backward: dy, q, k, v, out, lse, dq, dk, dv. */
  attention(pass: Pass, buffers: Buffers<'q' | 'k' | 'v' | 'out'>, shape: AttentionShape): void;
  rope(
    buffers: Buffers<'x' | 'cos' | 'sin' | 'out'>,
    dims: { BH: number; H: number; T: number; dh: number; dims: number; inverse: boolean; bthd: boolean },
  ): void;
  /**
   * Core's fused MoE experts, buffers named as the contract's inputs and outputs: MoelabMoeMLP, with
   * w3 MoelabMoeGLU, with dims.bits MoelabMoePacked (w1Codes, w1Scale, w1Zero, ...; w3Codes for
   * gated experts). Forward writes out and hidden; backward dx, dw1, dw3, dw2, dweight (packed: dx,
   * dweight). Throws a one-line error on a bad index.
   */
  moeExperts(pass: Pass, buffers: Buffers<'x' | 'tokenIndex' | 'expertIndex' | 'weight' | 'hidden'>, dims: MoeDims): void;
  /** Core's MoelabMoeLinear: forward out, backward dx, dw, dweight. */
  moeLinear(
    pass: Pass,
    buffers: Buffers<'x' | 'w' | 'inRow' | 'outRow' | 'expertIndex' | 'weight'>,
    dims: { R: number; din: number; dout: number; E: number; N: number; outRows: number },
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
  /** core's MoelabSoftmaxTopK: forward scores, bias?, weight, expert (slot-major [k, T]); backward dy, scores, weight, expert, dscores. */
  softmaxTopK(pass: Pass, buffers: Buffers<'scores' | 'weight' | 'expert'>, dims: { T: number; E: number; k: number; renormalize: boolean }): void;
  /** Forward x, gamma, beta?, y, mean, rstd; backward dy, x, gamma, mean, rstd, dx, dgamma, dbeta?. */
  layerNorm(pass: Pass, buffers: Buffers<'x' | 'gamma'>, dims: { rows: number; D: number; eps?: number }): void;
  /** Scalars as float32 in the order of core's op-by-op update. */
  adamw(
    buffers: Buffers<'p' | 'g' | 'm' | 'v' | 'pOut' | 'mOut' | 'vOut'>,
    scalars: {
      n: number;
      beta1: number;
      oneMinusBeta1: number;
      beta2: number;
      oneMinusBeta2: number;
      eps: number;
      bc1: number;
      bc2: number;
      lr: number;
      lrTimesDecay: number;
      decay: boolean;
    },
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
