/**
 * Data movement: Transpose (out = x permuted, rank <= 8, native and threaded) and strided row
 * copies for Slice, PadV2 and SplitV (the cpu kernels walk non-contiguous blocks element by
 * element through index math).
 */
import type * as tfTypes from '@tensorflow/tfjs';
import { outputArray } from '../storage.js';
import { backendOf, type Overrides, prod, type TensorInfo, values } from './helpers.js';
import { copyBlock } from './shapes.js';

export function registerLayout({ tf, native, cpu, add }: Overrides): void {
  add(tf.Transpose, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { perm } = args.attrs as { perm: number[] };
    if (x.dtype !== 'float32' || x.shape.length > 8) return cpu(tf.Transpose)(args);
    const backend = backendOf(args);
    const outShape = perm.map((p) => x.shape[p]);
    const out = outputArray(prod(x.shape));
    if (out.length > 0) native.transpose(values(backend, x), out, Int32Array.from(x.shape), Int32Array.from(perm));
    return backend.makeTensorInfo(outShape, 'float32', out);
  });

  // Strided row copies for Slice (non-contiguous: RoPE's half-channel slices, attention heads) and
  // PadV2 (Slice's gradient); the cpu kernels walk those element by element through index math.
  add(tf.Slice, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { begin, size } = args.attrs as unknown as { begin: number | number[]; size: number | number[] };
    if (x.dtype !== 'float32' || x.shape.length < 2) return cpu(tf.Slice)(args);
    const [b, s] = tf.slice_util.parseSliceParams(x as tfTypes.Tensor, begin, size);
    tf.slice_util.assertParamsValid(x as tfTypes.Tensor, b, s);
    if (prod(s) === 0 || tf.slice_util.isSliceContinous(x.shape, b, s)) return cpu(tf.Slice)(args);
    const backend = backendOf(args);
    const out = outputArray(prod(s));
    copyBlock(values(backend, x), x.shape, b, out, s, new Array<number>(s.length).fill(0), s);
    return backend.makeTensorInfo(s, 'float32', out);
  });

  add(tf.PadV2, (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { paddings, constantValue } = args.attrs as unknown as { paddings: [number, number][]; constantValue: number };
    if (x.dtype !== 'float32' || x.shape.length === 0) return cpu(tf.PadV2)(args);
    const backend = backendOf(args);
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
    const backend = backendOf(args);
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
}
