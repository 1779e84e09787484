/**
 * Reductions: Sum, Mean, Max and core's SUM_OF_SQUARES_KERNEL,
 *
 *   out[o, c] = reduce over r of x[o, r, c]  (x viewed as [outer, R, inner])
 *
 * in tfjs-cpu's order of additions (in double), so the results are bit-identical to it.
 */
import { REDUCE_CODE, SUM_OF_SQUARES_KERNEL, type SumOfSquaresInputs } from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import { backendOf, type Overrides, prod, type TensorInfo, values } from './helpers.js';

export function registerReduce({ tf, native, cpu, add }: Overrides): void {
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
      const backend = backendOf(args);
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
    const backend = backendOf(args);
    const n = prod(x.shape);
    const out = new Float32Array(1);
    if (n > 0) native.reduce(values(backend, x), out, 1, n, 1, REDUCE_CODE.sumOfSquares);
    return backend.makeTensorInfo([], 'float32', out);
  });
  reduce(tf.Sum, 'sum');
  reduce(tf.Mean, 'mean');
  reduce(tf.Max, 'max');
}
