/**
 * Elementwise float32 kernels: the broadcast binaries (Add, Sub, Multiply, RealDiv,
 * SquaredDifference: numpy broadcasting up to rank 6), the unaries AdamW, the norms and the
 * activations use, Cast between float32 / int32 / bool, Fill / ZerosLike / OnesLike, and the
 * storage-sharing Reshape and Identity. Other dtypes go to the host fallback.
 */
import { type Args, backendOf, broadcastStrides, type Ctx, inputs, prod, type TensorInfo } from './context.js';

const BINARY: Record<string, number> = { Multiply: 0, Add: 1, Sub: 2, RealDiv: 3, SquaredDifference: 4 };
const UNARY: Record<string, number> = { Neg: 0, Exp: 1, Log: 2, Sqrt: 3, Rsqrt: 4, Square: 5, Relu: 6, Sigmoid: 7, Tanh: 8, Abs: 9, Step: 10, Reciprocal: 11 };

export function registerElementwise({ tf, native, fallback, add }: Ctx): void {
  for (const [name, op] of Object.entries(BINARY)) {
    add(name, (args) => {
      const { a, b } = inputs(args);
      if (a.dtype !== 'float32' || b.dtype !== 'float32') return fallback(name)(args);
      const shape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
      if (shape.length > 6) return fallback(name)(args);
      const backend = backendOf(args);
      const out = backend.makeOutput(shape, 'float32');
      const n = prod(shape);
      if (n > 0) {
        native.binary(
          backend.dev(a),
          backend.dev(b),
          out.ptr,
          n,
          Int32Array.from(shape),
          Int32Array.from(broadcastStrides(a.shape, shape)),
          Int32Array.from(broadcastStrides(b.shape, shape)),
          op,
        );
      }
      return out.info;
    });
  }
  for (const [name, op] of Object.entries(UNARY)) {
    add(name, (args) => {
      const { x } = inputs(args);
      if (x.dtype !== 'float32') return fallback(name)(args);
      const backend = backendOf(args);
      const out = backend.makeOutput(x.shape, 'float32');
      const n = prod(x.shape);
      const alpha = name === 'Step' ? Number((args.attrs as { alpha?: number }).alpha ?? 0) : 0;
      if (n > 0) native.unary(backend.dev(x), out.ptr, n, op, alpha);
      return out.info;
    });
  }

  const share = (args: Args, x: TensorInfo, shape: number[]): TensorInfo => {
    backendOf(args).incRef(x.dataId);
    return { dataId: x.dataId, shape, dtype: x.dtype };
  };
  add('Reshape', (args) => {
    const { x } = inputs(args);
    const shape = tf.util.inferFromImplicitShape((args.attrs as { shape: number[] }).shape, prod(x.shape));
    if (prod(shape) !== prod(x.shape)) throw new Error(`Reshape: cannot reshape [${x.shape}] (${prod(x.shape)} elements) to [${shape}]`);
    return share(args, x, shape);
  });
  add('Identity', (args) => share(args, inputs(args).x, inputs(args).x.shape));
  add('Cast', (args) => {
    const { x } = inputs(args);
    const dtype = (args.attrs as { dtype: string }).dtype;
    if (dtype === x.dtype) return share(args, x, x.shape);
    const kind =
      x.dtype === 'int32' && dtype === 'float32' ? 0 : x.dtype === 'float32' && dtype === 'int32' ? 1 : x.dtype === 'bool' && dtype === 'float32' ? 2 : -1;
    if (kind < 0) return fallback('Cast')(args);
    const backend = backendOf(args);
    const out = backend.makeOutput(x.shape, dtype as 'float32' | 'int32');
    const n = prod(x.shape);
    if (n > 0) native.cast(backend.dev(x), out.ptr, n, kind);
    return out.info;
  });
  const filled = (args: Args, shape: number[], value: number): TensorInfo => {
    const backend = backendOf(args);
    const out = backend.makeOutput(shape, 'float32');
    const n = prod(shape);
    if (n > 0) native.fill(out.ptr, n, value);
    return out.info;
  };
  add('Fill', (args) => {
    const { shape, value, dtype } = args.attrs as { shape: number[]; value: number; dtype?: string };
    if ((dtype ?? 'float32') !== 'float32' || typeof value !== 'number') return fallback('Fill')(args);
    return filled(args, shape, value);
  });
  add('ZerosLike', (args) => (inputs(args).x.dtype === 'float32' ? filled(args, inputs(args).x.shape, 0) : fallback('ZerosLike')(args)));
  add('OnesLike', (args) => (inputs(args).x.dtype === 'float32' ? filled(args, inputs(args).x.shape, 1) : fallback('OnesLike')(args)));
}
