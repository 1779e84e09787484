/**
 * Sum / Mean / Max over adjacent axes (x viewed as [outer, R, inner], out [outer, inner]), core's
 * MoelabSumOfSquares (sum x^2 as a scalar), and the scans along one axis
 *
 *   Cumsum:  out_r = sum_{r' <= r} x_r'   (exclusive: r' < r; reverse: r' >= r, or r' > r)
 *   Cumprod: out_r = prod_{r' <= r} x_r'  (likewise; the empty product is 1)
 *
 * in float32 and int32, accumulated in the element type in tfjs-cpu's order. Non-adjacent axes
 * and other dtypes go to the host fallback.
 */
import { REDUCE_CODE, SUM_OF_SQUARES_KERNEL } from '@moelab/core/kernels';
import { backendOf, type Ctx, expectDtype, inputs, prod } from './context.js';

export function registerReduce({ tf, native, fallback, add }: Ctx): void {
  const kinds: [string, number][] = [
    ['Sum', REDUCE_CODE.sum],
    ['Mean', REDUCE_CODE.mean],
    ['Max', REDUCE_CODE.max],
  ];
  for (const [name, kind] of kinds) {
    add(name, (args) => {
      const { x } = inputs(args);
      const { axis: sumAxis, reductionIndices, keepDims } = args.attrs as { axis?: number | number[]; reductionIndices?: number | number[]; keepDims: boolean };
      // null / undefined: every axis.
      const axis = (name === 'Max' ? reductionIndices : sumAxis) ?? null;
      if (x.dtype !== 'float32') return fallback(name)(args);
      const axes = tf.util.parseAxisParam(axis as number[], x.shape).sort((a, b) => a - b);
      if (axes.some((a, i) => i > 0 && a !== axes[i - 1]! + 1)) return fallback(name)(args);
      const first = axes.length ? axes[0]! : 0;
      const outer = prod(x.shape.slice(0, first));
      const R = prod(x.shape.slice(first, first + axes.length));
      const inner = prod(x.shape.slice(first + axes.length));
      if (R === 0 && kind !== REDUCE_CODE.sum) return fallback(name)(args);
      const shape = keepDims ? x.shape.map((s, i) => (axes.includes(i) ? 1 : s)) : x.shape.filter((_, i) => !axes.includes(i));
      const backend = backendOf(args);
      const out = backend.makeOutput(shape, 'float32');
      if (outer * inner > 0) native.reduce(backend.dev(x), out.ptr, outer, R, inner, kind);
      return out.info;
    });
  }
  add(SUM_OF_SQUARES_KERNEL, (args) => {
    expectDtype(SUM_OF_SQUARES_KERNEL, inputs(args), ['x']);
    const { x } = inputs(args);
    const backend = backendOf(args);
    const out = backend.makeOutput([], 'float32');
    native.reduce(backend.dev(x), out.ptr, 1, prod(x.shape), 1, REDUCE_CODE.sumOfSquares);
    return out.info;
  });

  for (const [name, product] of [
    ['Cumsum', false],
    ['Cumprod', true],
  ] as const) {
    add(name, (args) => {
      const { x } = inputs(args);
      const { axis, exclusive, reverse } = args.attrs as { axis: number; exclusive: boolean; reverse: boolean };
      const rank = x.shape.length;
      const ax = axis < 0 ? axis + rank : axis;
      if ((x.dtype !== 'float32' && x.dtype !== 'int32') || !Number.isInteger(ax) || ax < 0 || ax >= rank) return fallback(name)(args);
      const backend = backendOf(args);
      const out = backend.makeOutput(x.shape, x.dtype);
      const dims = { outer: prod(x.shape.slice(0, ax)), R: x.shape[ax]!, inner: prod(x.shape.slice(ax + 1)) };
      if (prod(x.shape) > 0) native.scan(backend.dev(x), out.ptr, { ...dims, product, exclusive: !!exclusive, reverse: !!reverse, isInt: x.dtype === 'int32' });
      return out.info;
    });
  }
}
