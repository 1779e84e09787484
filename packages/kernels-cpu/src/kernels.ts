/**
 * Native overrides of tfjs-backend-cpu's hot kernels. Each works on the backend's TypedArrays in
 * place (no copies), writes only into a freshly allocated output, and hands any input it does not
 * handle (non-float32 dtypes, rare attributes) to the stock cpu kernel, which runs unchanged on our
 * backend because the backend *is* a MathBackendCPU.
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import type { NativeAddon } from './native.js';
import { outputArray } from './storage.js';
import {
  BINARY_OP_CODE,
  FUSED_MATMUL_ACTIVATION_CODE,
  REDUCE_CODE,
  SUM_OF_SQUARES_KERNEL,
  type SumOfSquaresInputs,
  UNARY_ACTIVATION_CODE,
} from '@moelab/core/kernels';

type Tf = typeof tfTypes;
type TensorInfo = tfTypes.TensorInfo;
type KernelConfig = tfTypes.KernelConfig;
type KernelFunc = tfTypes.KernelFunc;
type Args = Parameters<KernelFunc>[0];

// The cpu backend does not promise a Float32Array behind every float32 tensor: some kernels
// (e.g. Cast from bool) keep the source array (a Uint8Array). Those rare inputs are converted;
// the common case is zero-copy.
export function values(backend: MathBackendCPU, t: TensorInfo): Float32Array {
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array ? v : Float32Array.from(v as ArrayLike<number>);
}
export function ints(backend: MathBackendCPU, t: TensorInfo): Int32Array {
  const v = backend.data.get(t.dataId).values;
  return v instanceof Int32Array ? v : Int32Array.from(v as ArrayLike<number>);
}

const prod = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

/** numpy-style broadcast of two shapes; throws with tfjs's wording when incompatible. */
export function broadcastShapes(a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new Error(`Operands could not be broadcast together with shapes ${a} and ${b}.`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Element strides of `shape` seen through the broadcast `outShape` (0 on broadcast axes). */
function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const rank = outShape.length;
  const str = new Array<number>(rank).fill(0);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const o = rank - shape.length + i;
    str[o] = shape[i] === 1 ? 0 : s;
    s *= shape[i];
  }
  return str;
}

/** For each output batch index, the batch index of an input with batch shape `shape` (or null if identical). */
function batchMap(shape: readonly number[], outShape: readonly number[]): Int32Array | null {
  const n = prod(outShape);
  if (prod(shape) === n) return null;
  const str = broadcastStrides(shape, outShape);
  const map = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let rem = i;
    let off = 0;
    for (let k = outShape.length - 1; k >= 0; k--) {
      off += (rem % outShape[k]) * str[k];
      rem = Math.floor(rem / outShape[k]);
    }
    map[i] = off;
  }
  return map;
}

/**
 * Copy the block of extent `ext` starting at `srcBegin` in src (shape srcShape) to `dstBegin` in dst
 * (shape dstShape), row by row along the last axis.
 */
export function copyBlock(
  src: Float32Array,
  srcShape: readonly number[],
  srcBegin: readonly number[],
  dst: Float32Array,
  dstShape: readonly number[],
  dstBegin: readonly number[],
  ext: readonly number[],
): void {
  const rank = ext.length;
  const inner = ext[rank - 1];
  if (prod(ext) === 0) return;
  const sStr = new Array<number>(rank);
  const dStr = new Array<number>(rank);
  sStr[rank - 1] = 1;
  dStr[rank - 1] = 1;
  for (let k = rank - 2; k >= 0; k--) {
    sStr[k] = sStr[k + 1] * srcShape[k + 1];
    dStr[k] = dStr[k + 1] * dstShape[k + 1];
  }
  let so = 0;
  let dO = 0;
  for (let k = 0; k < rank; k++) {
    so += srcBegin[k] * sStr[k];
    dO += dstBegin[k] * dStr[k];
  }
  const idx = new Array<number>(rank).fill(0);
  const rows = prod(ext) / inner;
  for (let r = 0; r < rows; r++) {
    if (inner >= 64) dst.set(src.subarray(so, so + inner), dO);
    else for (let j = 0; j < inner; j++) dst[dO + j] = src[so + j];
    // Odometer over the outer axes.
    for (let k = rank - 2; k >= 0; k--) {
      idx[k]++;
      so += sStr[k];
      dO += dStr[k];
      if (idx[k] < ext[k]) break;
      so -= ext[k] * sStr[k];
      dO -= ext[k] * dStr[k];
      idx[k] = 0;
    }
  }
}

export interface Overrides {
  configs: KernelConfig[];
  /** Matmul on the native GEMM, used by _FusedMatMul and exported for benchmarks. */
  batchMatMul: (backend: MathBackendCPU, a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean) => TensorInfo;
}

// _FusedMatMul's activation attr -> native code (a Map: an attr such as 'toString' finds nothing).
const FUSED_ACT = new Map<string, number>(Object.entries(FUSED_MATMUL_ACTIVATION_CODE));

export function makeOverrides(tf: Tf, native: NativeAddon, backendName: string): Overrides {
  const cpu = (name: string): KernelFunc => {
    const k = tf.getKernel(name, 'cpu');
    if (!k) throw new Error(`moelab-cpu: the cpu backend has no ${name} kernel to fall back to`);
    return k.kernelFunc;
  };
  const be = (args: Args) => args.backend as unknown as MathBackendCPU;

  function batchMatMul(backend: MathBackendCPU, a: TensorInfo, b: TensorInfo, tA: boolean, tB: boolean): TensorInfo {
    const ar = a.shape.length;
    const br = b.shape.length;
    const M = tA ? a.shape[ar - 1] : a.shape[ar - 2];
    const K = tA ? a.shape[ar - 2] : a.shape[ar - 1];
    const K2 = tB ? b.shape[br - 1] : b.shape[br - 2];
    const N = tB ? b.shape[br - 2] : b.shape[br - 1];
    if (K !== K2) {
      throw new Error(
        `Error in matMul: inner shapes (${K}) and (${K2}) of Tensors with shapes ${a.shape} and ${b.shape} and ` +
          `transposeA=${tA} and transposeB=${tB} must match.`,
      );
    }
    const aBatch = a.shape.slice(0, -2);
    const bBatch = b.shape.slice(0, -2);
    const outBatch = broadcastShapes(aBatch, bBatch);
    const batch = prod(outBatch);
    const out = outputArray(batch * M * N);
    if (out.length > 0) {
      native.sgemmBatched(
        tA,
        tB,
        batch,
        M,
        N,
        K,
        values(backend, a),
        batchMap(aBatch, outBatch),
        prod(aBatch),
        values(backend, b),
        batchMap(bBatch, outBatch),
        prod(bBatch),
        out,
      );
    }
    return backend.makeTensorInfo([...outBatch, M, N], 'float32', out);
  }

  const configs: KernelConfig[] = [];
  const add = (kernelName: string, kernelFunc: (args: Args) => TensorInfo | TensorInfo[]) =>
    configs.push({ kernelName, backendName, kernelFunc: kernelFunc as KernelFunc });

  add(tf.BatchMatMul, (args) => {
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return cpu(tf.BatchMatMul)(args);
    return batchMatMul(be(args), a, b, transposeA, transposeB);
  });

  add(tf._FusedMatMul, (args) => {
    const backend = be(args);
    const { a, b, bias, preluActivationWeights } = args.inputs as Record<string, TensorInfo | undefined>;
    const { transposeA, transposeB, activation, leakyreluAlpha } = args.attrs as {
      transposeA: boolean;
      transposeB: boolean;
      activation: string;
      leakyreluAlpha?: number;
    };
    if (!a || !b || a.dtype !== 'float32' || b.dtype !== 'float32' || (bias && bias.dtype !== 'float32')) {
      return cpu(tf._FusedMatMul)(args);
    }
    let out = batchMatMul(backend, a, b, transposeA, transposeB);
    const N = out.shape[out.shape.length - 1];
    const rows = N === 0 ? 0 : prod(out.shape) / N;
    // A bias over the last axis (the Dense-layer case) and the elementwise activations are fused
    // into one pass over the fresh output; anything else goes through the cpu kernels.
    const rowBias = bias !== undefined && bias.shape.length <= out.shape.length && prod(bias.shape) === N && bias.shape[bias.shape.length - 1] === N;
    let fusedBias = false;
    if (bias && !rowBias) {
      const withBias = cpu(tf.Add)({ inputs: { a: out, b: bias }, backend: args.backend, attrs: {} }) as TensorInfo;
      backend.disposeIntermediateTensorInfo(out);
      out = withBias;
    } else if (bias) {
      fusedBias = true;
    }
    const act = FUSED_ACT.get(activation ?? 'linear');
    const outValues = values(backend, out);
    if (act !== undefined) {
      if (fusedBias || act !== FUSED_MATMUL_ACTIVATION_CODE.linear) {
        native.biasAct(outValues, rows, N, fusedBias && bias ? values(backend, bias) : null, act, leakyreluAlpha ?? 0.2);
      }
      return out;
    }
    if (fusedBias && bias) native.biasAct(outValues, rows, N, values(backend, bias), FUSED_MATMUL_ACTIVATION_CODE.linear, 0);
    if (activation === 'prelu' && preluActivationWeights) {
      const r = cpu(tf.Prelu)({ inputs: { x: out, alpha: preluActivationWeights }, backend: args.backend, attrs: {} }) as TensorInfo;
      backend.disposeIntermediateTensorInfo(out);
      return r;
    }
    throw new Error(`moelab-cpu: _FusedMatMul activation '${activation}' is not supported`);
  });

  add(tf.Transpose, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { perm } = args.attrs as { perm: number[] };
    if (x.dtype !== 'float32' || x.shape.length > 8) return cpu(tf.Transpose)(args);
    const backend = be(args);
    const outShape = perm.map((p) => x.shape[p]);
    const out = outputArray(prod(x.shape));
    if (out.length > 0) native.transpose(values(backend, x), out, Int32Array.from(x.shape), Int32Array.from(perm));
    return backend.makeTensorInfo(outShape, 'float32', out);
  });

  const binary = (kernelName: string, op: number, outDtype: 'float32' | 'bool' = 'float32') =>
    add(kernelName, (args) => {
      const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
      if (a.dtype !== 'float32' || b.dtype !== 'float32') return cpu(kernelName)(args);
      const backend = be(args);
      const outShape = broadcastShapes(a.shape, b.shape);
      const size = prod(outShape);
      const out = outDtype === 'bool' ? new Uint8Array(size) : outputArray(size);
      if (size > 0) {
        // Merge adjacent axes that are contiguous for both inputs (or broadcast for both), so the
        // native inner loop runs over the longest possible stride-1 / stride-0 run.
        const as = broadcastStrides(a.shape, outShape);
        const bs = broadcastStrides(b.shape, outShape);
        const shp: number[] = [];
        const sa: number[] = [];
        const sb: number[] = [];
        for (let i = 0; i < outShape.length; i++) {
          if (outShape[i] === 1) continue;
          const k = shp.length - 1;
          if (k >= 0 && sa[k] === as[i] * outShape[i] && sb[k] === bs[i] * outShape[i]) {
            shp[k] *= outShape[i];
            sa[k] = as[i];
            sb[k] = bs[i];
          } else {
            shp.push(outShape[i]);
            sa.push(as[i]);
            sb.push(bs[i]);
          }
        }
        if (shp.length === 0) {
          shp.push(1);
          sa.push(0);
          sb.push(0);
        }
        if (shp.length > 8) return cpu(kernelName)(args);
        native.mulBroadcast(values(backend, a), values(backend, b), out, Int32Array.from(shp), Int32Array.from(sa), Int32Array.from(sb), op);
      }
      return backend.makeTensorInfo(outShape, outDtype, out);
    });
  // Elementwise binaries with numpy broadcasting (LayerNorm's x - mean, residual adds, masks, ...):
  // the cpu kernels index every element through a generic broadcast loop.
  binary(tf.Multiply, BINARY_OP_CODE.mul);
  binary(tf.Add, BINARY_OP_CODE.add);
  binary(tf.Sub, BINARY_OP_CODE.sub);
  binary(tf.RealDiv, BINARY_OP_CODE.div);
  binary(tf.SquaredDifference, BINARY_OP_CODE.squaredDifference);
  // Comparisons (bool out): Max's gradient compares x with its broadcast maximum (logsumexp in the
  // routers' balancing losses), which the cpu kernel does element by element through index math.
  binary(tf.Equal, BINARY_OP_CODE.equal, 'bool');
  binary(tf.NotEqual, BINARY_OP_CODE.notEqual, 'bool');
  binary(tf.Greater, BINARY_OP_CODE.greater, 'bool');
  binary(tf.GreaterEqual, BINARY_OP_CODE.greaterEqual, 'bool');
  binary(tf.Less, BINARY_OP_CODE.less, 'bool');
  binary(tf.LessEqual, BINARY_OP_CODE.lessEqual, 'bool');

  // Strided row copies for Slice (non-contiguous: RoPE's half-channel slices, attention heads) and
  // PadV2 (Slice's gradient); the cpu kernels walk those element by element through index math.
  add(tf.Slice, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { begin, size } = args.attrs as unknown as { begin: number | number[]; size: number | number[] };
    if (x.dtype !== 'float32' || x.shape.length < 2) return cpu(tf.Slice)(args);
    const [b, s] = tf.slice_util.parseSliceParams(x as tfTypes.Tensor, begin, size);
    tf.slice_util.assertParamsValid(x as tfTypes.Tensor, b, s);
    if (prod(s) === 0 || tf.slice_util.isSliceContinous(x.shape, b, s)) return cpu(tf.Slice)(args);
    const backend = be(args);
    const out = outputArray(prod(s));
    copyBlock(values(backend, x), x.shape, b, out, s, new Array<number>(s.length).fill(0), s);
    return backend.makeTensorInfo(s, 'float32', out);
  });

  add(tf.PadV2, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { paddings, constantValue } = args.attrs as unknown as { paddings: [number, number][]; constantValue: number };
    if (x.dtype !== 'float32' || x.shape.length === 0) return cpu(tf.PadV2)(args);
    const backend = be(args);
    const outShape = x.shape.map((d, i) => paddings[i][0] + d + paddings[i][1]);
    const out = new Float32Array(prod(outShape));
    if (constantValue !== 0) out.fill(constantValue);
    if (prod(x.shape) > 0) {
      copyBlock(
        values(backend, x),
        x.shape,
        new Array<number>(x.shape.length).fill(0),
        out,
        outShape,
        paddings.map((p) => p[0]),
        x.shape,
      );
    }
    return backend.makeTensorInfo(outShape, 'float32', out);
  });

  add(tf.SplitV, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { numOrSizeSplits, axis } = args.attrs as unknown as { numOrSizeSplits: number | number[]; axis: number };
    if (x.dtype !== 'float32' || x.shape.length < 2) return cpu(tf.SplitV)(args);
    const backend = be(args);
    const ax = tf.util.parseAxisParam(axis, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(x as tfTypes.Tensor, numOrSizeSplits, ax);
    const xv = values(backend, x);
    const begin = new Array<number>(x.shape.length).fill(0);
    return sizes.map((n) => {
      const size = x.shape.slice();
      size[ax] = n;
      const out = outputArray(prod(size));
      copyBlock(xv, x.shape, begin, out, size, new Array<number>(size.length).fill(0), size);
      begin[ax] += n;
      return backend.makeTensorInfo(size, 'float32', out);
    });
  });

  // Reductions (bias / broadcast gradients, LayerNorm statistics, softmax max): the same order of
  // additions as the cpu kernels (the reduced elements in order, summed in double), so results are
  // bit-identical, but threaded and without the cpu kernels' transpose when the reduced axes are
  // adjacent (x viewed as [outer, R, inner]: a bias gradient reduces the leading axes).
  const reduce = (kernelName: string, kind: keyof typeof REDUCE_CODE) =>
    add(kernelName, (args) => {
      const { x } = args.inputs as { x: TensorInfo };
      // Sum and Mean call it `axis`, Max `reductionIndices`.
      const { axis, reductionIndices, keepDims } = args.attrs as unknown as {
        axis?: number | number[];
        reductionIndices?: number | number[];
        keepDims: boolean;
      };
      if (x.dtype !== 'float32') return cpu(kernelName)(args);
      const backend = be(args);
      const rank = x.shape.length;
      const axes = tf.util.parseAxisParam((kind === 'max' ? reductionIndices : axis) as number | number[], x.shape).sort((a, b) => a - b);
      let xv = values(backend, x);
      let shape = x.shape;
      let first = axes[0] ?? rank;
      const adjacent = axes.every((a, i) => a === first + i);
      if (!adjacent) {
        // Move the reduced axes last (the cpu kernel's layout), then reduce rows.
        const perm = tf.backend_util.getAxesPermutation(axes, rank) as number[];
        const t = outputArray(xv.length);
        if (t.length > 0) native.transpose(xv, t, Int32Array.from(x.shape), Int32Array.from(perm));
        xv = t;
        shape = perm.map((p) => x.shape[p]);
        first = rank - axes.length;
      }
      const last = first + axes.length;
      const outer = prod(shape.slice(0, first));
      const R = prod(shape.slice(first, last));
      const inner = prod(shape.slice(last));
      const outShape = x.shape.filter((_, i) => !axes.includes(i));
      const out = outputArray(outer * inner);
      if (out.length > 0) native.reduce(xv, out, outer, R, inner, REDUCE_CODE[kind]);
      const finalShape = keepDims ? tf.backend_util.expandShapeToKeepDim(outShape, axes) : outShape;
      return backend.makeTensorInfo(finalShape, 'float32', out);
    });
  // SUM_OF_SQUARES_KERNEL: x -> scalar sum of x^2, the global gradient norm's term per tensor:
  // tf.sum(tf.square(x)) on cpu without the parameter-sized temporary (bit for bit up to 2^17
  // elements; larger ones are summed in threaded blocks).
  add(SUM_OF_SQUARES_KERNEL, (args) => {
    const { x } = args.inputs as unknown as SumOfSquaresInputs<TensorInfo | undefined>;
    if (x?.dtype !== 'float32') throw new Error(`${SUM_OF_SQUARES_KERNEL}: input 'x' must be float32, got ${x ? x.dtype : 'nothing'}`);
    const backend = be(args);
    const n = prod(x.shape);
    const out = new Float32Array(1);
    if (n > 0) native.reduce(values(backend, x), out, 1, n, 1, REDUCE_CODE.sumOfSquares);
    return backend.makeTensorInfo([], 'float32', out);
  });
  reduce(tf.Sum, 'sum');
  reduce(tf.Mean, 'mean');
  reduce(tf.Max, 'max');

  // Elementwise unaries (AdamW's sqrt/square, activations, ...): one monomorphic loop each instead
  // of the cpu backend's shared per-element callback. Same formulas, so the same float32 results.
  const unary = (kernelName: string, loop: (x: Float32Array, out: Float32Array) => void) =>
    add(kernelName, (args) => {
      const { x } = args.inputs as { x: TensorInfo };
      if (x.dtype !== 'float32') return cpu(kernelName)(args);
      const backend = be(args);
      const out = outputArray(prod(x.shape));
      loop(values(backend, x), out);
      return backend.makeTensorInfo(x.shape, 'float32', out);
    });
  unary(tf.Sqrt, (x, o) => {
    for (let i = 0; i < o.length; i++) o[i] = Math.sqrt(x[i]);
  });
  unary(tf.Rsqrt, (x, o) => {
    for (let i = 0; i < o.length; i++) o[i] = 1 / Math.sqrt(x[i]);
  });
  unary(tf.Square, (x, o) => {
    for (let i = 0; i < o.length; i++) o[i] = x[i] * x[i];
  });
  unary(tf.Neg, (x, o) => {
    for (let i = 0; i < o.length; i++) o[i] = -1 * x[i];
  });
  unary(tf.Log, (x, o) => {
    for (let i = 0; i < o.length; i++) o[i] = Math.log(x[i]);
  });
  unary(tf.Abs, (x, o) => {
    for (let i = 0; i < o.length; i++) o[i] = Math.abs(x[i]);
  });
  // Relu and its gradient's Step on big activations ([tokens, 4d]), Exp and Sigmoid (router gates):
  // copied, then one threaded native pass in place (NaN stays NaN, as in the cpu kernels).
  const threadedUnary = (kernelName: string, act: number, alphaOf: (attrs: Record<string, unknown>) => number) =>
    add(kernelName, (args) => {
      const { x } = args.inputs as { x: TensorInfo };
      if (x.dtype !== 'float32') return cpu(kernelName)(args);
      const backend = be(args);
      const n = prod(x.shape);
      const out = outputArray(n);
      // Rows of the last axis, so the pool can split them (one row would run on one thread).
      const cols = x.shape.length > 0 ? x.shape[x.shape.length - 1] : 1;
      if (n > 0) native.biasAct(out, n / cols, cols, null, act, alphaOf((args.attrs ?? {}) as Record<string, unknown>), values(backend, x));
      return backend.makeTensorInfo(x.shape, 'float32', out);
    });
  threadedUnary(tf.Relu, UNARY_ACTIVATION_CODE.reluNan, () => 0);
  threadedUnary(tf.Step, UNARY_ACTIVATION_CODE.step, (attrs) => Number(attrs.alpha ?? 0));
  threadedUnary(tf.Exp, UNARY_ACTIVATION_CODE.expDouble, () => 0);
  threadedUnary(tf.Sigmoid, UNARY_ACTIVATION_CODE.sigmoidDouble, () => 0);

  add(tf.GatherV2, (args) => {
    const { x, indices } = args.inputs as { x: TensorInfo; indices: TensorInfo };
    const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
    if (x.dtype !== 'float32' || indices.dtype !== 'int32' || (batchDims ?? 0) !== 0) return cpu(tf.GatherV2)(args);
    const backend = be(args);
    const ax = axis < 0 ? axis + x.shape.length : axis;
    const outer = prod(x.shape.slice(0, ax));
    const dim = x.shape[ax];
    const inner = prod(x.shape.slice(ax + 1));
    const idx = ints(backend, indices);
    const outShape = [...x.shape.slice(0, ax), ...indices.shape, ...x.shape.slice(ax + 1)];
    const out = outputArray(prod(outShape));
    const bad = native.gather(values(backend, x), idx, out, outer, dim, inner);
    if (bad >= 0) throw new Error(`GatherV2: the index value ${idx[bad]} is not in [0, ${dim - 1}]`);
    return backend.makeTensorInfo(outShape, 'float32', out);
  });

  add(tf.Softmax, (args) => {
    const { logits } = args.inputs as { logits: TensorInfo };
    const { dim } = args.attrs as { dim: number };
    const rank = logits.shape.length;
    if (logits.dtype !== 'float32' || rank === 0 || (dim !== -1 && dim !== rank - 1)) return cpu(tf.Softmax)(args);
    const backend = be(args);
    const cols = logits.shape[rank - 1];
    const out = outputArray(prod(logits.shape));
    if (out.length > 0) native.softmax(values(backend, logits), out, out.length / cols, cols);
    return backend.makeTensorInfo(logits.shape, 'float32', out);
  });

  add(tf.TopK, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { k } = args.attrs as { k: number; sorted: boolean };
    if (x.dtype !== 'float32' || x.shape.length === 0) return cpu(tf.TopK)(args);
    const backend = be(args);
    const cols = x.shape[x.shape.length - 1];
    const rows = cols === 0 ? 0 : prod(x.shape) / cols;
    const vals = new Float32Array(rows * k);
    const idx = new Int32Array(rows * k);
    // Always sorted (descending, ties to the lower index): a valid answer for sorted=false too.
    if (rows > 0 && k > 0) native.topk(values(backend, x), vals, idx, rows, cols, k);
    const outShape = [...x.shape.slice(0, -1), k];
    return [backend.makeTensorInfo(outShape, 'float32', vals), backend.makeTensorInfo(outShape, 'int32', idx)];
  });

  add(tf.UnsortedSegmentSum, (args) => {
    const { x, segmentIds } = args.inputs as { x: TensorInfo; segmentIds: TensorInfo };
    const { numSegments } = args.attrs as { numSegments: number };
    if (x.dtype !== 'float32' || segmentIds.dtype !== 'int32') return cpu(tf.UnsortedSegmentSum)(args);
    const backend = be(args);
    const n = prod(segmentIds.shape);
    const innerShape = x.shape.slice(segmentIds.shape.length);
    const inner = prod(innerShape);
    const out = new Float32Array(numSegments * inner);
    if (out.length > 0) native.segmentSum(values(backend, x), ints(backend, segmentIds), out, n, inner, numSegments);
    return backend.makeTensorInfo([numSegments, ...innerShape], 'float32', out);
  });

  return { configs, batchMatMul };
}
