/**
 * Data movement: Transpose, Slice, StridedSlice (any begin / end / strides and masks, negative
 * strides included), Concat, SplitV, Pack, Unpack and PadV2 (rank <= 6; float32, int32 and bool)
 * as one strided device copy each, Tile (out[i] = x[i mod shape]), GatherV2 (batchDims 0; an index outside the
 * axis throws, as on tfjs-cpu), UnsortedSegmentSum (segment ids over the first axis, atomics),
 * Softmax over the last axis and TopK (value descending, lower index first on ties).
 */
import type { CudaAddon, Ptr } from '../native.js';
import { type Args, backendOf, type Ctx, inputs, prod, stridesOf, type TensorInfo } from './context.js';

/** Bytes per element on the device (0: the dtype stays on the host). */
const elemBytes = (dtype: string): number => (dtype === 'bool' ? 1 : dtype === 'float32' || dtype === 'int32' ? 4 : 0);
const MAX_RANK = 6;

/**
 * out[outOffset + sum_d i_d outStrides_d] = x[xOffset + sum_d i_d xStrides_d] for every index i of
 * `shape` (offsets and strides in elements).
 */
export function stridedCopy(
  native: CudaAddon,
  x: Ptr,
  xOffset: number,
  out: Ptr,
  outOffset: number,
  shape: readonly number[],
  xStrides: readonly number[],
  outStrides: readonly number[],
  bytes: number,
): void {
  const n = prod(shape);
  if (n === 0) return;
  native.stridedCopy(x + xOffset * bytes, out + outOffset * bytes, { shape, a: xStrides, b: outStrides }, bytes);
}

export function registerLayout({ tf, native, fallback, add }: Ctx): void {
  /** Whether every tensor can be copied on the device. */
  const copyable = (ts: TensorInfo[], rank: number) => rank <= MAX_RANK && ts.every((t) => elemBytes(t.dtype) > 0 && t.dtype === ts[0]!.dtype);

  add('Transpose', (args) => {
    const { x } = inputs(args);
    const { perm } = args.attrs as { perm: number[] };
    if (!copyable([x], x.shape.length)) return fallback('Transpose')(args);
    const shape = perm.map((p) => x.shape[p]!);
    const xs = stridesOf(x.shape);
    const backend = backendOf(args);
    const out = backend.makeOutput(shape, x.dtype);
    stridedCopy(
      native,
      backend.dev(x),
      0,
      out.ptr,
      0,
      shape,
      perm.map((p) => xs[p]!),
      stridesOf(shape),
      elemBytes(x.dtype),
    );
    return out.info;
  });

  // A window [begin, begin + size) of x into a fresh tensor.
  const window = (args: Args, x: TensorInfo, begin: number[], size: number[]): TensorInfo => {
    const backend = backendOf(args);
    const xs = stridesOf(x.shape);
    const out = backend.makeOutput(size, x.dtype);
    const offset = begin.reduce((acc, b, i) => acc + b * xs[i]!, 0);
    if (prod(size) > 0) stridedCopy(native, backend.dev(x), offset, out.ptr, 0, size, xs, stridesOf(size), elemBytes(x.dtype));
    return out.info;
  };

  add('Slice', (args) => {
    const { x } = inputs(args);
    const { begin, size } = args.attrs as { begin: number | number[]; size: number | number[] };
    if (!copyable([x], x.shape.length)) return fallback('Slice')(args);
    const [b, s] = tf.slice_util.parseSliceParams(x as never, begin, size);
    tf.slice_util.assertParamsValid(x as never, b, s);
    return window(args, x, b, s);
  });

  // StridedSlice: out[i] = x[begin + i * strides] over the window of x (tfjs's slice_util resolves
  // the masks), reshaped to the final shape (the same elements in the same order).
  add('StridedSlice', (args) => {
    const { x } = inputs(args);
    const a = args.attrs as {
      begin: number[];
      end: number[];
      strides: number[];
      beginMask: number;
      endMask: number;
      ellipsisMask: number;
      newAxisMask: number;
      shrinkAxisMask: number;
    };
    if (!copyable([x], x.shape.length)) return fallback('StridedSlice')(args);
    const info = tf.slice_util.sliceInfo(x.shape, a.begin, a.end, a.strides, a.beginMask, a.endMask, a.ellipsisMask, a.newAxisMask, a.shrinkAxisMask);
    // The resolved window per axis of x (shrunk axes keep their one element).
    const space = info.begin.map((b, i) => Math.max(0, Math.ceil((info.end[i]! - b) / info.strides[i]!)));
    if (space.length !== x.shape.length || prod(space) !== prod(info.finalShape)) return fallback('StridedSlice')(args);
    const xs = stridesOf(x.shape);
    const backend = backendOf(args);
    const out = backend.makeOutput(info.finalShape, x.dtype);
    if (prod(space) > 0) {
      const offset = info.begin.reduce((acc, b, i) => acc + b * xs[i]!, 0);
      const steps = info.strides.map((st, i) => st * xs[i]!);
      stridedCopy(native, backend.dev(x), offset, out.ptr, 0, space, steps, stridesOf(space), elemBytes(x.dtype));
    }
    return out.info;
  });

  add('Tile', (args) => {
    const { x } = inputs(args);
    const { reps } = args.attrs as { reps: number[] };
    if (!copyable([x], x.shape.length) || reps.length !== x.shape.length) return fallback('Tile')(args);
    const shape = x.shape.map((s, i) => s * reps[i]!);
    const backend = backendOf(args);
    const out = backend.makeOutput(shape, x.dtype);
    if (prod(shape) > 0) native.tile(backend.dev(x), out.ptr, { shape, a: stridesOf(x.shape), b: x.shape }, elemBytes(x.dtype));
    return out.info;
  });

  add('SplitV', (args) => {
    const { x } = inputs(args);
    const { numOrSizeSplits, axis } = args.attrs as { numOrSizeSplits: number | number[]; axis: number };
    if (!copyable([x], x.shape.length)) return fallback('SplitV')(args);
    const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
    const sizes = tf.backend_util.prepareSplitSize(x as never, numOrSizeSplits, ax);
    const begin = x.shape.map(() => 0);
    return sizes.map((s) => {
      const size = x.shape.slice();
      size[ax] = s;
      const t = window(args, x, begin.slice(), size);
      begin[ax]! += s;
      return t;
    });
  });

  add('Unpack', (args) => {
    const { value } = inputs(args);
    const { axis } = args.attrs as { axis: number };
    if (!copyable([value], value.shape.length)) return fallback('Unpack')(args);
    const ax = axis < 0 ? axis + value.shape.length : axis;
    const size = value.shape.slice();
    size[ax] = 1;
    const outShape = value.shape.filter((_, i) => i !== ax);
    return Array.from({ length: value.shape[ax]! }, (_, i) => {
      const begin = value.shape.map((_, d) => (d === ax ? i : 0));
      const t = window(args, value, begin, size);
      return { ...t, shape: outShape };
    });
  });

  // Each input into its place along `axis` of the output (Concat), or at index i of a new axis (Pack).
  const place = (args: Args, ts: TensorInfo[], outShape: number[], axis: number, stacked: boolean): TensorInfo => {
    const backend = backendOf(args);
    const out = backend.makeOutput(outShape, ts[0]!.dtype);
    const os = stridesOf(outShape);
    const placeStrides = stacked ? os.filter((_, d) => d !== axis) : os;
    let at = 0;
    for (const t of ts) {
      if (prod(t.shape) > 0) stridedCopy(native, backend.dev(t), 0, out.ptr, at * os[axis]!, t.shape, stridesOf(t.shape), placeStrides, elemBytes(t.dtype));
      at += stacked ? 1 : t.shape[axis]!;
    }
    return out.info;
  };

  add('Concat', (args) => {
    const ts = args.inputs as unknown as TensorInfo[];
    const { axis } = args.attrs as { axis: number };
    if (ts.length === 0 || !copyable(ts, ts[0]!.shape.length)) return fallback('Concat')(args);
    const ax = tf.util.parseAxisParam(axis, ts[0]!.shape)[0]!;
    tf.backend_util.assertParamsConsistent(
      ts.map((t) => t.shape),
      ax,
    );
    const outShape = tf.backend_util.computeOutShape(
      ts.map((t) => t.shape),
      ax,
    );
    return place(args, ts, outShape, ax, false);
  });

  add('Pack', (args) => {
    const ts = args.inputs as unknown as TensorInfo[];
    const { axis } = args.attrs as { axis: number };
    if (ts.length === 0 || !copyable(ts, ts[0]!.shape.length + 1)) return fallback('Pack')(args);
    const shape = ts[0]!.shape;
    for (const t of ts) {
      if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i]))
        throw new Error(`Pack: all tensors passed to stack must have matching shapes, got [${t.shape}] and [${shape}]`);
    }
    const ax = axis < 0 ? axis + shape.length + 1 : axis;
    const outShape = [...shape.slice(0, ax), ts.length, ...shape.slice(ax)];
    return place(args, ts, outShape, ax, true);
  });

  add('PadV2', (args) => {
    const { x } = inputs(args);
    const { paddings, constantValue } = args.attrs as { paddings: [number, number][]; constantValue: number };
    if ((x.dtype !== 'float32' && x.dtype !== 'int32') || x.shape.length > MAX_RANK) return fallback('PadV2')(args);
    const outShape = x.shape.map((s, i) => paddings[i]![0] + s + paddings[i]![1]);
    const backend = backendOf(args);
    const out = backend.makeOutput(outShape, x.dtype);
    const n = prod(outShape);
    if (n === 0) return out.info;
    if (x.dtype === 'float32') native.fill(out.ptr, n, constantValue);
    else native.range(out.ptr, n, constantValue, 0, true);
    const os = stridesOf(outShape);
    const offset = paddings.reduce((acc, [before], i) => acc + before * os[i]!, 0);
    if (prod(x.shape) > 0) stridedCopy(native, backend.dev(x), 0, out.ptr, offset, x.shape, stridesOf(x.shape), os, 4);
    return out.info;
  });

  add('GatherV2', (args) => {
    const { x, indices } = inputs(args);
    const { axis, batchDims } = args.attrs as { axis: number; batchDims?: number };
    if ((x.dtype !== 'float32' && x.dtype !== 'int32') || indices.dtype !== 'int32' || (batchDims ?? 0) !== 0) return fallback('GatherV2')(args);
    const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
    const outer = prod(x.shape.slice(0, ax));
    const dim = x.shape[ax]!;
    const inner = prod(x.shape.slice(ax + 1));
    const nIdx = prod(indices.shape);
    const shape = [...x.shape.slice(0, ax), ...indices.shape, ...x.shape.slice(ax + 1)];
    const backend = backendOf(args);
    const out = backend.makeOutput(shape, x.dtype);
    if (prod(shape) > 0) {
      const bad = native.gather(backend.dev(x), backend.dev(indices), out.ptr, outer, dim, inner, nIdx, x.dtype === 'int32');
      if (bad >= 0) {
        backend.disposeData(out.info.dataId, true);
        const value = (backend.host(indices) as Int32Array)[bad];
        throw new Error(`GatherV2: the index value ${value} is not in [0, ${dim - 1}]`);
      }
    }
    return out.info;
  });

  add('UnsortedSegmentSum', (args) => {
    const { x, segmentIds } = inputs(args);
    const { numSegments } = args.attrs as { numSegments: number };
    if (x.dtype !== 'float32' || segmentIds.dtype !== 'int32' || segmentIds.shape.length !== 1 || x.shape[0] !== segmentIds.shape[0]) {
      return fallback('UnsortedSegmentSum')(args);
    }
    const n = x.shape[0] ?? 0;
    const inner = prod(x.shape.slice(1));
    const backend = backendOf(args);
    const out = backend.makeOutput([numSegments, ...x.shape.slice(1)], 'float32');
    if (numSegments * inner > 0) native.segmentSum(backend.dev(x), backend.dev(segmentIds), out.ptr, n, inner, numSegments);
    return out.info;
  });

  add('Softmax', (args) => {
    const { logits } = inputs(args);
    const { dim } = args.attrs as { dim: number };
    const rank = logits.shape.length;
    if (logits.dtype !== 'float32' || rank === 0 || (dim !== -1 && dim !== rank - 1)) return fallback('Softmax')(args);
    const cols = logits.shape[rank - 1]!;
    const backend = backendOf(args);
    const out = backend.makeOutput(logits.shape, 'float32');
    if (prod(logits.shape) > 0) native.softmax(backend.dev(logits), out.ptr, prod(logits.shape) / cols, cols);
    return out.info;
  });

  add('TopK', (args) => {
    const { x } = inputs(args);
    const { k, sorted } = args.attrs as { k: number; sorted: boolean };
    const rank = x.shape.length;
    if (x.dtype !== 'float32' || rank === 0 || sorted === false) return fallback('TopK')(args);
    const cols = x.shape[rank - 1]!;
    if (!(Number.isInteger(k) && k >= 0 && k <= cols)) throw new Error(`TopK: k must be an integer in [0, ${cols}], got ${k}`);
    const shape = [...x.shape.slice(0, -1), k];
    const backend = backendOf(args);
    const values = backend.makeOutput(shape, 'float32');
    const indices = backend.makeOutput(shape, 'int32');
    if (prod(shape) > 0) native.topk(backend.dev(x), values.ptr, indices.ptr, prod(x.shape) / cols, cols, k);
    return [values.info, indices.info];
  });
}
