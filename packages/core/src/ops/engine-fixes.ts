/**
 * Gaps in stock tfjs that break MoE training, closed once for every backend (docs/engine.md#side-effects-of-importing-core).
 *
 * 1. TopK has no gradient: we register one (values' gradient scattered back to the input positions).
 * 2. GatherV2's gradient returns an int32 gradient for `indices`, which autodiff rejects when the indices
 *    come from a routing decision (`gather(table, topk(x).indices)`): we re-register it with float zeros.
 * 3. The cpu backend's UnsortedSegmentSum is O(segments x size) (140 s for 64 segments of [4096,256]) and
 *    it is what GatherV2's gradient calls; wasm has none at all. We register an O(N) kernel for both.
 */
import { MoelabError } from '../errors.js';
import * as tf from '@tensorflow/tfjs';

let installed = false;

function segmentSumValues(x: Float32Array, ids: Int32Array, numSegments: number, inner: number): Float32Array {
  const out = new Float32Array(numSegments * inner);
  for (let i = 0; i < ids.length; i++) {
    const s = ids[i]!;
    // TF semantics: out-of-range (e.g. negative) segment ids are dropped.
    if (s < 0 || s >= numSegments) continue;
    const src = i * inner;
    const dst = s * inner;
    for (let j = 0; j < inner; j++) out[dst + j]! += x[src + j]!;
  }
  return out;
}

interface SegmentArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: unknown;
  attrs?: tf.NamedAttrMap;
}

/** A backend-agnostic O(N) UnsortedSegmentSum for backends whose storage is readable synchronously. */
function makeSegmentSumKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.UnsortedSegmentSum,
    backendName,
    kernelFunc: ((args: SegmentArgs) => {
      const { x, segmentIds } = args.inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
      const numSegments = (args.attrs as { numSegments: number }).numSegments;
      // biome-ignore lint/suspicious/noExplicitAny: backends expose different storage APIs
      const backend = args.backend as any;
      const xv = backend.readSync(x.dataId) as Float32Array | Int32Array;
      let idv = backend.readSync(segmentIds.dataId) as Int32Array | Float32Array;
      if (!(idv instanceof Int32Array)) idv = Int32Array.from(idv);
      const idCount = segmentIds.shape.reduce((a, b) => a * b, 1);
      const inner = idCount === 0 ? 0 : x.shape.slice(segmentIds.shape.length).reduce((a, b) => a * b, 1);
      const xf = xv instanceof Float32Array ? xv : Float32Array.from(xv);
      const values = segmentSumValues(xf, idv, numSegments, inner);
      const shape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
      const outValues = x.dtype === 'int32' ? Int32Array.from(values) : values;
      if (typeof backend.makeTensorInfo === 'function' && backendName !== 'wasm') {
        return backend.makeTensorInfo(shape, x.dtype, outValues);
      }
      return backend.makeOutput(shape, x.dtype, undefined, outValues);
    }) as unknown as tf.KernelFunc,
  };
}

/** Register the O(N) segment sum for a backend (called for cpu and wasm here, and by backend packages). */
export function registerSegmentSumFor(backendName: string): void {
  if (tf.getKernel(tf.UnsortedSegmentSum, backendName)) tf.unregisterKernel(tf.UnsortedSegmentSum, backendName);
  tf.registerKernel(makeSegmentSumKernel(backendName));
}

function gatherGrad(dy: tf.Tensor, x: tf.Tensor, indices: tf.Tensor, axis: number, batchDims: number) {
  if (batchDims !== 0) throw new Error('moelab: GatherV2 gradient with batchDims > 0 is not supported');
  const ax = axis < 0 ? axis + x.rank : axis;
  const outer = x.shape.slice(0, ax);
  const inner = x.shape.slice(ax + 1);
  const n = indices.size;
  // dy: outer + indices.shape + inner -> [outer, n, inner] -> [n, outer, inner]
  const dyR = tf.reshape(dy, [...outer, n, ...inner]);
  const perm = [outer.length, ...outer.map((_, i) => i), ...inner.map((_, i) => outer.length + 1 + i)];
  const dyT = tf.transpose(dyR, perm);
  const summed = tf.unsortedSegmentSum(dyT, tf.reshape(indices, [n]) as tf.Tensor1D, x.shape[ax]!);
  const inv = new Array<number>(perm.length);
  perm.forEach((p, i) => {
    inv[p] = i;
  });
  return tf.transpose(summed, inv);
}

export function installEngineFixes(): void {
  if (installed) return;
  installed = true;

  tf.registerGradient({
    kernelName: tf.GatherV2,
    inputsToSave: ['x', 'indices'],
    gradFunc: (dy, saved, attrs) => {
      const [x, indices] = saved as [tf.Tensor, tf.Tensor];
      const { axis, batchDims } = attrs as unknown as { axis: number; batchDims: number };
      return {
        x: () => gatherGrad(dy as tf.Tensor, x, indices, axis, batchDims ?? 0),
        // Routing indices are discrete: their gradient is zero, and it must be float for autodiff.
        indices: () => tf.zeros(indices.shape, 'float32'),
      };
    },
  });

  tf.registerGradient({
    kernelName: tf.TopK,
    inputsToSave: ['x'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved) => {
      const [x, indices] = saved as [tf.Tensor, tf.Tensor];
      const dValues = (Array.isArray(dys) ? dys[0] : dys) as tf.Tensor;
      return {
        x: () => {
          const n = x.shape[x.rank - 1]!;
          const k = indices.shape[indices.rank - 1]!;
          const rows = x.size / n;
          const idx2 = tf.reshape(indices, [rows, k]);
          const offs = tf.mul(tf.range(0, rows, 1, 'int32'), tf.scalar(n, 'int32'));
          const flat = tf.reshape(tf.add(idx2, tf.reshape(offs, [rows, 1])), [rows * k]);
          const summed = tf.unsortedSegmentSum(tf.reshape(dValues, [rows * k]), flat as tf.Tensor1D, rows * n);
          return tf.reshape(summed, x.shape);
        },
      };
    },
  });

  // Stock gradient masks negative ids with logicalAnd/where over the whole gathered tensor (measured
  // 30 ms a call on wasm); moelab's segment ids are never negative, so check that once and gather.
  tf.registerGradient({
    kernelName: tf.UnsortedSegmentSum,
    inputsToSave: ['segmentIds'],
    gradFunc: (dy, saved) => {
      const [segmentIds] = saved as [tf.Tensor];
      return {
        x: () => {
          const ids = segmentIds.dataSync();
          let negative = false;
          for (let i = 0; i < ids.length; i++) if (ids[i]! < 0) negative = true;
          const gathered = tf.gather(dy as tf.Tensor, negative ? tf.maximum(segmentIds, tf.scalar(0, 'int32')) : segmentIds);
          if (!negative) return gathered;
          const keep = tf.reshape(tf.cast(tf.greaterEqual(segmentIds, tf.scalar(0, 'int32')), 'float32'), [
            ids.length,
            ...new Array(gathered.rank - 1).fill(1),
          ]);
          return tf.mul(gathered, keep);
        },
      };
    },
  });

  for (const name of ['cpu', 'wasm']) {
    // wasm may be absent (not imported); registering a kernel for an unknown backend is harmless.
    registerSegmentSumFor(name);
  }
}

let wasmPatched = false;

/**
 * tfjs-backend-wasm runs BatchMatMul through XNNPACK only for batch 1 without transposes; every other
 * case (attention, batched expert GEMMs, every backward matmul) is a scalar loop at ~0.5 GFLOP/s
 * (docs/engine.md#side-effects-of-importing-core). This wraps its kernel: transposes are done in JS and each batch is one
 * XNNPACK call, which measured ~25x faster. Call once after the wasm backend is registered
 * (`resolveBackend('wasm')` does).
 */
export function patchWasmBackend(): boolean {
  if (wasmPatched) return true;
  const original = tf.getKernel(tf.BatchMatMul, 'wasm');
  if (!original) return false;
  wasmPatched = true;
  patchWasmGather();
  replaceWasmKernel(tf.BatchMatMul, original, (inner) => (args: SegmentArgs) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const ra = a.shape.length;
    const rb = b.shape.length;
    const batchA = a.shape.slice(0, -2).reduce((x, y) => x * y, 1);
    const batchB = b.shape.slice(0, -2).reduce((x, y) => x * y, 1);
    if ((batchA === 1 && batchB === 1 && !transposeA && !transposeB) || a.dtype !== 'float32' || b.dtype !== 'float32') return inner(args);
    // biome-ignore lint/suspicious/noExplicitAny: wasm backend internals
    const backend = args.backend as any;
    const m = transposeA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
    const k = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
    const n = transposeB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
    const outBatch = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
    const batch = Math.max(batchA, batchB);
    if (batchA !== batch && batchA !== 1) return inner(args);
    if (batchB !== batch && batchB !== 1) return inner(args);
    const av = backend.readSync(a.dataId) as Float32Array;
    const bv = backend.readSync(b.dataId) as Float32Array;
    const out = new Float32Array(batch * m * n);
    const as = new Float32Array(m * k);
    const bs = new Float32Array(k * n);
    for (let i = 0; i < batch; i++) {
      const ao = (batchA === 1 ? 0 : i) * m * k;
      const bo = (batchB === 1 ? 0 : i) * k * n;
      if (transposeA) {
        for (let r = 0; r < k; r++) for (let c = 0; c < m; c++) as[c * k + r] = av[ao + r * m + c]!;
      } else as.set(av.subarray(ao, ao + m * k));
      if (transposeB) {
        for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) bs[c * n + r] = bv[bo + r * k + c]!;
      } else bs.set(bv.subarray(bo, bo + k * n));
      const ta = backend.makeOutput([1, m, k], 'float32', undefined, as);
      const tb = backend.makeOutput([1, k, n], 'float32', undefined, bs);
      const r = inner({ inputs: { a: ta, b: tb }, backend, attrs: { transposeA: false, transposeB: false } as unknown as tf.NamedAttrMap });
      out.set(backend.typedArrayFromHeap(r) as Float32Array, i * m * n);
      backend.disposeData(ta.dataId);
      backend.disposeData(tb.dataId);
      backend.disposeData(r.dataId);
    }
    return backend.makeOutput([...outBatch, m, n], 'float32', undefined, out);
  });
  return true;
}

/**
 * tfjs-backend-wasm's GatherV2 copies element by element (measured 45 ms for 8192 rows of 128 floats,
 * about 100x a row copy); MoE dispatch gathers rows on every layer. Axis-0 gathers of float32/int32
 * tensors become row copies here; anything else goes to the original kernel.
 */
function patchWasmGather(): void {
  const original = tf.getKernel(tf.GatherV2, 'wasm');
  if (!original) return;
  replaceWasmKernel(tf.GatherV2, original, (inner) => (args: SegmentArgs) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const { axis, batchDims } = args.attrs as unknown as { axis: number; batchDims: number };
    const ax = axis < 0 ? axis + x.shape.length : axis;
    if (ax !== 0 || (batchDims ?? 0) !== 0 || (x.dtype !== 'float32' && x.dtype !== 'int32')) return inner(args);
    // biome-ignore lint/suspicious/noExplicitAny: wasm backend internals
    const backend = args.backend as any;
    const rows = x.shape[0]!;
    const inner1 = x.shape.slice(1).reduce((a, b) => a * b, 1);
    const idx = backend.readSync(indices.dataId) as Int32Array | Float32Array;
    // A view of the wasm heap: valid until the next allocation, so copy everything out before makeOutput.
    const src = backend.typedArrayFromHeap(x) as Float32Array | Int32Array;
    const out = x.dtype === 'float32' ? new Float32Array(idx.length * inner1) : new Int32Array(idx.length * inner1);
    for (let i = 0; i < idx.length; i++) {
      const r = idx[i]!;
      if (r < 0 || r >= rows) throw new MoelabError(`index ${r} is out of range [0, ${rows})`, 'gather');
      out.set(src.subarray(r * inner1, (r + 1) * inner1), i * inner1);
    }
    return backend.makeOutput([...indices.shape, ...x.shape.slice(1)], x.dtype, undefined, out);
  });
}

type KernelArgsFunc = (args: SegmentArgs) => tf.TensorInfo;

/** Swap a wasm kernel for `wrap(original)`, keeping its setup/dispose hooks. */
function replaceWasmKernel(name: string, original: tf.KernelConfig, wrap: (inner: KernelArgsFunc) => KernelArgsFunc): void {
  const inner = original.kernelFunc as unknown as KernelArgsFunc;
  tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({
    kernelName: name,
    backendName: 'wasm',
    setupFunc: original.setupFunc,
    disposeFunc: original.disposeFunc,
    kernelFunc: wrap(inner) as unknown as tf.KernelFunc,
  });
}
