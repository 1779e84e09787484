/**
 * Data movement: Transpose (rank <= 6, float32 and int32), GatherV2 (batchDims 0; an index outside
 * the axis throws, as on tfjs-cpu), UnsortedSegmentSum (segment ids over the first axis, atomics),
 * Softmax over the last axis and TopK (value descending, lower index first on ties).
 */
import { backendOf, type Ctx, inputs, prod, stridesOf } from './context.js';

export function registerLayout({ tf, native, fallback, add }: Ctx): void {
  add('Transpose', (args) => {
    const { x } = inputs(args);
    const { perm } = args.attrs as { perm: number[] };
    if ((x.dtype !== 'float32' && x.dtype !== 'int32') || x.shape.length > 6) return fallback('Transpose')(args);
    const shape = perm.map((p) => x.shape[p]!);
    const xs = stridesOf(x.shape);
    const backend = backendOf(args);
    const out = backend.makeOutput(shape, x.dtype);
    const n = prod(shape);
    if (n > 0) native.transpose(backend.dev(x), out.ptr, n, Int32Array.from(shape), Int32Array.from(perm.map((p) => xs[p]!)), x.dtype === 'int32');
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
