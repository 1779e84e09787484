/**
 * Elementwise kernels: the broadcast binaries (numpy broadcasting up to rank 6) in float32 and
 * int32 (Add, Sub, Multiply, SquaredDifference, Maximum, Minimum; RealDiv and Pow in float32), the
 * comparisons (Equal, NotEqual, Greater, GreaterEqual, Less, LessEqual: bool out), AddN, Select
 * (tf.where; a condition of the values' shape or one per row), Range, the float32 unaries the models use, Cast between float32 / int32 / bool,
 * Fill / ZerosLike / OnesLike, and the storage-sharing Reshape, ExpandDims and Identity. Other dtypes go to the
 * host fallback.
 */
import { BINARY_OP_CODE } from '@moelab/core/kernels';
import { type Args, backendOf, broadcastStrides, type Ctx, inputs, prod, type TensorInfo } from './context.js';

/** Binary op codes: the contract's BINARY_OP_CODE plus the CUDA kernels' own maximum, minimum and pow. */
const BINARY: Record<string, number> = {
  Multiply: BINARY_OP_CODE.mul,
  Add: BINARY_OP_CODE.add,
  Sub: BINARY_OP_CODE.sub,
  RealDiv: BINARY_OP_CODE.div,
  SquaredDifference: BINARY_OP_CODE.squaredDifference,
  Equal: BINARY_OP_CODE.equal,
  NotEqual: BINARY_OP_CODE.notEqual,
  Greater: BINARY_OP_CODE.greater,
  GreaterEqual: BINARY_OP_CODE.greaterEqual,
  Less: BINARY_OP_CODE.less,
  LessEqual: BINARY_OP_CODE.lessEqual,
  Maximum: 11,
  Minimum: 12,
  Pow: 13,
};
const isComparison = (op: number) => op >= BINARY_OP_CODE.equal && op <= BINARY_OP_CODE.lessEqual;

/** Unary codes of kernels.cu's unary_k. */
const UNARY: Record<string, number> = {
  Neg: 0,
  Exp: 1,
  Log: 2,
  Sqrt: 3,
  Rsqrt: 4,
  Square: 5,
  Relu: 6,
  Sigmoid: 7,
  Tanh: 8,
  Abs: 9,
  Step: 10,
  Reciprocal: 11,
  Erf: 12,
  Sin: 13,
  Cos: 14,
  Floor: 15,
  Ceil: 16,
  Elu: 17,
  Relu6: 18,
  Log1p: 19,
  Expm1: 20,
  LeakyRelu: 21,
};

/** Float32 integers are exact below 2^24: a Range whose values stay there equals tfjs's running sum. */
const EXACT_FLOAT_INT = 2 ** 24;

export function registerElementwise({ tf, native, fallback, add }: Ctx): void {
  const binary = (args: Args, a: TensorInfo, b: TensorInfo, op: number, out?: { info: TensorInfo; ptr: number }): TensorInfo => {
    const shape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const backend = backendOf(args);
    const o = out ?? backend.makeOutput(shape, isComparison(op) ? 'bool' : a.dtype);
    const n = prod(shape);
    if (n > 0) {
      native.binary(
        backend.dev(a),
        backend.dev(b),
        o.ptr,
        { shape, a: broadcastStrides(a.shape, shape), b: broadcastStrides(b.shape, shape) },
        op,
        a.dtype === 'int32',
      );
    }
    return o.info;
  };

  for (const [name, op] of Object.entries(BINARY)) {
    add(name, (args) => {
      const { a, b } = inputs(args);
      const intOk = op !== BINARY_OP_CODE.div && name !== 'Pow';
      const dtypeOk = a.dtype === b.dtype && (a.dtype === 'float32' || (a.dtype === 'int32' && intOk));
      if (!dtypeOk || Math.max(a.shape.length, b.shape.length) > 6) return fallback(name)(args);
      return binary(args, a, b, op);
    });
  }

  add('AddN', (args) => {
    const ts = args.inputs as unknown as TensorInfo[];
    const first = ts[0];
    const same = (t: TensorInfo) => t.dtype === 'float32' && t.shape.length === first!.shape.length && t.shape.every((s, i) => s === first!.shape[i]);
    if (!first || !ts.every(same) || first.shape.length > 6) return fallback('AddN')(args);
    const backend = backendOf(args);
    if (ts.length === 1) {
      const out = backend.makeOutput(first.shape, 'float32');
      if (prod(first.shape) > 0) native.copy(out.ptr, backend.dev(first), prod(first.shape) * 4);
      return out.info;
    }
    const out = backend.makeOutput(first.shape, 'float32');
    binary(args, ts[0]!, ts[1]!, BINARY_OP_CODE.add, out);
    // The running sum is both an input and the output: each element reads its own index only.
    for (const t of ts.slice(2)) binary(args, out.info, t, BINARY_OP_CODE.add, out);
    return out.info;
  });

  // tfjs's Select: the condition has the values' shape (what tf.where passes), or is a vector
  // over the values' first axis (one choice per row).
  add('Select', (args) => {
    const { condition, t, e } = inputs(args);
    const sameShape = (x: TensorInfo, y: TensorInfo) => x.shape.length === y.shape.length && x.shape.every((s, i) => s === y.shape[i]);
    const bytes = t.dtype === 'bool' ? 1 : t.dtype === 'float32' || t.dtype === 'int32' ? 4 : 0;
    const rows = condition.shape.length === 1 && t.shape.length > 1 && condition.shape[0] === t.shape[0] && t.shape.length <= 6;
    const ok = condition.dtype === 'bool' && t.dtype === e.dtype && bytes > 0 && sameShape(t, e) && (sameShape(condition, t) || rows);
    if (!ok) return fallback('Select')(args);
    const backend = backendOf(args);
    const out = backend.makeOutput(t.shape, t.dtype);
    const n = prod(t.shape);
    const space = rows ? { shape: t.shape, a: t.shape.map((_, i) => (i === 0 ? 1 : 0)) } : { shape: [n], a: [1] };
    if (n > 0) native.select(backend.dev(condition), backend.dev(t), backend.dev(e), out.ptr, space, bytes);
    return out.info;
  });

  add('Range', (args) => {
    const { start, stop, step, dtype } = args.attrs as { start: number; stop: number; step: number; dtype: 'float32' | 'int32' };
    const empty = start === stop || (start < stop && step < 0) || (stop < start && step > 1);
    const n = empty ? 0 : Math.abs(Math.ceil((stop - start) / step));
    const exact =
      dtype === 'int32' || (Number.isInteger(start) && Number.isInteger(step) && Math.max(Math.abs(start), Math.abs(start + n * step)) < EXACT_FLOAT_INT);
    if ((dtype !== 'float32' && dtype !== 'int32') || !exact) return fallback('Range')(args);
    const out = backendOf(args).makeOutput([n], dtype);
    if (n > 0) native.range(out.ptr, n, start, step, dtype === 'int32');
    return out.info;
  });

  for (const [name, op] of Object.entries(UNARY)) {
    add(name, (args) => {
      const { x } = inputs(args);
      if (x.dtype !== 'float32') return fallback(name)(args);
      const backend = backendOf(args);
      const out = backend.makeOutput(x.shape, 'float32');
      const n = prod(x.shape);
      const alpha = name === 'Step' || name === 'LeakyRelu' ? Number((args.attrs as { alpha?: number }).alpha ?? 0) : 0;
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
  add('ExpandDims', (args) => {
    const { input } = inputs(args);
    const rank = input.shape.length;
    const dim = (args.attrs as { dim: number }).dim;
    const at = dim < 0 ? dim + rank + 1 : dim;
    if (!(Number.isInteger(at) && at >= 0 && at <= rank)) throw new Error(`ExpandDims: axis ${dim} is outside [${-(rank + 1)}, ${rank}]`);
    return share(args, input, [...input.shape.slice(0, at), 1, ...input.shape.slice(at)]);
  });
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
  // float32 through fill, int32 as a Range of step 0.
  const filled = (args: Args, shape: number[], value: number, dtype: 'float32' | 'int32'): TensorInfo => {
    const backend = backendOf(args);
    const out = backend.makeOutput(shape, dtype);
    const n = prod(shape);
    if (n > 0) {
      if (dtype === 'float32') native.fill(out.ptr, n, value);
      else native.range(out.ptr, n, value, 0, true);
    }
    return out.info;
  };
  const fillable = (dtype: string): dtype is 'float32' | 'int32' => dtype === 'float32' || dtype === 'int32';
  add('Fill', (args) => {
    const { shape, value, dtype = 'float32' } = args.attrs as { shape: number[]; value: number; dtype?: string };
    if (!fillable(dtype) || typeof value !== 'number') return fallback('Fill')(args);
    return filled(args, shape, value, dtype);
  });
  for (const [name, value] of [
    ['ZerosLike', 0],
    ['OnesLike', 1],
  ] as const) {
    add(name, (args) => {
      const { x } = inputs(args);
      return fillable(x.dtype) ? filled(args, x.shape, value, x.dtype) : fallback(name)(args);
    });
  }
}
