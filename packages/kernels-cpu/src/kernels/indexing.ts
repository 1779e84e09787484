/**
 * Index kernels of routing and embeddings:
 *
 *   GatherV2:            out[o, i, :] = x[o, idx[i], :]  (bad indices throw)
 *   TopK:                per row, the k largest values, descending, ties to the lower index
 *   UnsortedSegmentSum:  out[s] = sum of the rows x[n] with ids[n] = s  (ids out of range dropped)
 */
import { outputArray } from '../storage.js';
import { backendOf, ints, type Overrides, prod, type TensorInfo, values } from './helpers.js';

export function registerIndexing({ tf, native, cpu, add }: Overrides): void {
  add(tf.GatherV2, (args) => {
    const { x, indices } = args.inputs as { x: TensorInfo; indices: TensorInfo };
    const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
    if (x.dtype !== 'float32' || indices.dtype !== 'int32' || (batchDims ?? 0) !== 0) return cpu(tf.GatherV2)(args);
    const backend = backendOf(args);
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

  add(tf.TopK, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { k } = args.attrs as { k: number; sorted: boolean };
    if (x.dtype !== 'float32' || x.shape.length === 0) return cpu(tf.TopK)(args);
    const backend = backendOf(args);
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
    const backend = backendOf(args);
    const n = prod(segmentIds.shape);
    const innerShape = x.shape.slice(segmentIds.shape.length);
    const inner = prod(innerShape);
    const out = new Float32Array(numSegments * inner);
    if (out.length > 0) native.segmentSum(values(backend, x), ints(backend, segmentIds), out, n, inner, numSegments);
    return backend.makeTensorInfo([numSegments, ...innerShape], 'float32', out);
  });
}
