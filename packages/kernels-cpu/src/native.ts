/**
 * Loads the native addon (build/Release/moelab_cpu.node) once. Never throws: when the addon is
 * missing or fails to load, `loadNative()` returns `{ addon: null, reason }` with the build log's
 * reason (build/moelab-build.json, written by scripts/build-native.mjs) and how to get the fast path.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { buildFailedHelp, missingAddonReason } from '../scripts/build-help.mjs';

/** The trailing sizes of the fused expert calls: tokens, model width, expert hidden, experts, assignments, activation code. */
type MoeExpertSizes = [T: number, d: number, h: number, E: number, N: number, act: number];
/** The trailing sizes of the expert-selected linear calls: rows, in and out widths, experts, assignments, output rows. */
type MoeLinearSizes = [R: number, din: number, dout: number, E: number, N: number, outRows: number];

/** One packed expert weight [E, din, dout] (layout in src/native/quant.h). */
export interface PackedWeightArrays {
  codes: Int32Array;
  scale: Float32Array;
  zero: Float32Array;
}

/** The functions the addon exports (see src/native/addon.cc for the argument contracts). */
export interface NativeAddon {
  info(): { gemm: 'openblas' | 'builtin'; haveBlas: boolean; threads: number };
  setThreads(n: number): number;
  setGemm(useBlas: boolean): 'openblas' | 'builtin';
  /** glibc only: fixed mmap and trim thresholds (bytes); false where unsupported or refused. */
  tuneMalloc(mmapThreshold: number, trimThreshold: number): boolean;
  sgemmBatched(
    ta: boolean,
    tb: boolean,
    batch: number,
    M: number,
    N: number,
    K: number,
    A: Float32Array,
    aIdx: Int32Array | null,
    batchA: number,
    B: Float32Array,
    bIdx: Int32Array | null,
    batchB: number,
    C: Float32Array,
  ): void;
  /** out = act(out + bias), or act(src + bias) when src is given. */
  biasAct(out: Float32Array, M: number, N: number, bias: Float32Array | null, act: number, alpha: number, src?: Float32Array | null): void;
  transpose(x: Float32Array, out: Float32Array, shape: Int32Array, perm: Int32Array): void;
  /**
   * out = a (op) b with broadcast strides; op: 0 mul (default), 1 add, 2 sub, 3 div, 4 squared
   * difference; comparisons into a Uint8Array out: 5 equal, 6 not equal, 7 >, 8 >=, 9 <, 10 <=.
   */
  mulBroadcast(a: Float32Array, b: Float32Array, out: Float32Array | Uint8Array, shape: Int32Array, aStr: Int32Array, bStr: Int32Array, op?: number): void;
  gather(x: Float32Array, idx: Int32Array, out: Float32Array, outer: number, dim: number, inner: number): number;
  softmax(x: Float32Array, out: Float32Array, rows: number, cols: number): void;
  topk(x: Float32Array, values: Float32Array, indices: Int32Array, rows: number, cols: number, k: number): void;
  /** The softmax top-k gate (core's SOFTMAX_TOPK_KERNEL): weight and expert [k,T] slot-major; bias [E] or null. */
  softmaxTopK(
    scores: Float32Array,
    bias: Float32Array | null,
    weight: Float32Array,
    expert: Int32Array,
    T: number,
    E: number,
    k: number,
    renormalize: boolean,
  ): void;
  /** Its backward: dscores [T,E] from dy, weight and expert [k,T]. */
  softmaxTopKGrad(
    dy: Float32Array,
    scores: Float32Array,
    weight: Float32Array,
    expert: Int32Array,
    dscores: Float32Array,
    T: number,
    E: number,
    k: number,
    renormalize: boolean,
  ): void;
  /** The sigmoid top-k gate (core's SIGMOID_TOPK_KERNEL): weight = sigmoid(chosen score), expert [k,T] slot-major. */
  sigmoidTopK(scores: Float32Array, weight: Float32Array, expert: Int32Array, T: number, E: number, k: number): void;
  /** Its backward: dscores [T,E], zero but the chosen entries. */
  sigmoidTopKGrad(dy: Float32Array, weight: Float32Array, expert: Int32Array, dscores: Float32Array, T: number, E: number, k: number): void;
  layerNormForward(
    x: Float32Array,
    gamma: Float32Array,
    beta: Float32Array | null,
    y: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    rows: number,
    D: number,
    eps: number,
  ): void;
  layerNormBackward(
    dy: Float32Array,
    x: Float32Array,
    gamma: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    dx: Float32Array,
    dgamma: Float32Array,
    dbeta: Float32Array | null,
    rows: number,
    D: number,
  ): void;
  /** One fused AdamW step; scalars = [beta1, 1-beta1, beta2, 1-beta2, eps, bc1, bc2, lr, lr*weightDecay]. */
  adamw(
    p: Float32Array,
    g: Float32Array,
    m: Float32Array,
    v: Float32Array,
    pOut: Float32Array,
    mOut: Float32Array,
    vOut: Float32Array,
    n: number,
    scalars: number[],
    decay: boolean,
  ): void;
  /** out[o, c] = sum (kind 0) / mean (1) / max (2) / sum of squares (3) over r of x viewed as [outer, R, inner]. */
  reduce(x: Float32Array, out: Float32Array, outer: number, R: number, inner: number, kind: number): void;
  segmentSum(x: Float32Array, ids: Int32Array, out: Float32Array, n: number, inner: number, numSegments: number): void;
  /** bthd: q, k, v, out are [B, T, H, d] instead of [B, H, T, d]; lse is [B*H, T] either way. */
  causalAttentionForward(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    lse: Float32Array,
    BH: number,
    T: number,
    dk: number,
    dv: number,
    scale: number,
    H: number,
    bthd: boolean,
  ): void;
  /**
   * Attention of m new query rows over the first n of Tk cached positions (row i sees keys 0 .. n-m+i):
   * q [B,H,m,dk], k [B,Hkv,Tk,dk], v [B,Hkv,Tk,dv], out [B,H,m,dv]; query head h reads kv head floor(h·Hkv/H).
   */
  cachedAttentionForward(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    B: number,
    H: number,
    Hkv: number,
    m: number,
    n: number,
    Tk: number,
    dk: number,
    dv: number,
    scale: number,
  ): void;
  causalAttentionBackward(
    dy: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    lse: Float32Array,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    BH: number,
    T: number,
    dkDim: number,
    dvDim: number,
    scale: number,
    H: number,
    bthd: boolean,
  ): void;
  rope(
    x: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    out: Float32Array,
    BH: number,
    T: number,
    dh: number,
    dims: number,
    inverse: boolean,
    H: number,
    bthd: boolean,
  ): void;
  moeMlpForward(
    x: Float32Array,
    w1: Float32Array,
    w2: Float32Array,
    tok: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    out: Float32Array,
    hidden: Float32Array,
    ...sizes: MoeExpertSizes
  ): void;
  moeMlpBackward(
    dy: Float32Array,
    x: Float32Array,
    w1: Float32Array,
    w2: Float32Array,
    tok: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    hidden: Float32Array,
    dx: Float32Array,
    dw1: Float32Array,
    dw2: Float32Array,
    dweight: Float32Array,
    ...sizes: MoeExpertSizes
  ): void;
  moeGluForward(
    x: Float32Array,
    w1: Float32Array,
    w3: Float32Array,
    w2: Float32Array,
    tok: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    out: Float32Array,
    hidden: Float32Array,
    ...sizes: MoeExpertSizes
  ): void;
  moeGluBackward(
    dy: Float32Array,
    x: Float32Array,
    w1: Float32Array,
    w3: Float32Array,
    w2: Float32Array,
    tok: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    hidden: Float32Array,
    dx: Float32Array,
    dw1: Float32Array,
    dw3: Float32Array,
    dw2: Float32Array,
    dweight: Float32Array,
    ...sizes: MoeExpertSizes
  ): void;
  /**
   * Packed experts (weight-only quantized, layout in src/native/quant.h), gated when w3 is given
   * (null otherwise); `hidden` as moeMlpForward / moeGluForward.
   */
  moePackedForward(
    x: Float32Array,
    w1: PackedWeightArrays,
    w3: PackedWeightArrays | null,
    w2: PackedWeightArrays,
    tok: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    out: Float32Array,
    hidden: Float32Array,
    ...sizes: [...MoeExpertSizes, bits: number, group: number]
  ): void;
  /** The packed experts' backward w.r.t. x and the routing weights. */
  moePackedBackward(
    dy: Float32Array,
    x: Float32Array,
    w1: PackedWeightArrays,
    w3: PackedWeightArrays | null,
    w2: PackedWeightArrays,
    tok: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    hidden: Float32Array,
    dx: Float32Array,
    dweight: Float32Array,
    ...sizes: [...MoeExpertSizes, bits: number, group: number]
  ): void;
  moeLinearForward(
    x: Float32Array,
    w: Float32Array,
    inRow: Int32Array,
    outRow: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    out: Float32Array,
    ...sizes: MoeLinearSizes
  ): void;
  moeLinearBackward(
    dy: Float32Array,
    x: Float32Array,
    w: Float32Array,
    inRow: Int32Array,
    outRow: Int32Array,
    exp: Int32Array,
    weight: Float32Array,
    dx: Float32Array,
    dw: Float32Array,
    dweight: Float32Array,
    ...sizes: MoeLinearSizes
  ): void;
}

export interface NativeLoad {
  addon: NativeAddon | null;
  /** Why the addon is unavailable (empty when it loaded). */
  reason: string;
}

/** What to install and run when the build failed (the toolchain, then a rebuild). */
export const HOW_TO_BUILD = buildFailedHelp();

// The package root, from src/ (tests) and from dist/ (built) alike.
const pkgRoot = fileURLToPath(new URL('..', import.meta.url));

let cached: NativeLoad | undefined;

export function loadNative(): NativeLoad {
  if (cached) return cached;
  const file = `${pkgRoot}build/Release/moelab_cpu.node`;
  if (!existsSync(file)) {
    let record: { ok?: boolean; reason?: string } | undefined;
    try {
      record = JSON.parse(readFileSync(`${pkgRoot}build/moelab-build.json`, 'utf8'));
    } catch {
      /* no build record: the install script never ran (blocked by the package manager, or --ignore-scripts) */
    }
    cached = { addon: null, reason: missingAddonReason(record) };
    return cached;
  }
  // OpenBLAS reads these when the library is loaded: keep its own threads out of the way (our pool
  // parallelises, see src/native/pool.h) unless the user asked for something else.
  process.env.OPENBLAS_NUM_THREADS ??= '1';
  process.env.OMP_NUM_THREADS ??= '1';
  process.env.OMP_WAIT_POLICY ??= 'passive';
  try {
    const require = createRequire(import.meta.url);
    cached = { addon: require(file) as NativeAddon, reason: '' };
  } catch (e) {
    cached = { addon: null, reason: `the native addon failed to load (${(e as Error).message}). ${HOW_TO_BUILD}` };
  }
  return cached;
}
