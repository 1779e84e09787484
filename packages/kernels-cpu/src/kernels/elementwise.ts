/**
 * Elementwise kernels:
 *
 *   binary:  out = a (op) b with numpy broadcasting; op in mul, add, sub, div, squared difference,
 *            and the comparisons (bool out)
 *   unary:   sqrt, rsqrt, square, neg, log, abs as one monomorphic loop each; relu, step, exp and
 *            sigmoid through the threaded native pass
 *
 * Same formulas as tfjs-backend-cpu, so the same float32 results.
 */
import { BINARY_OP_CODE, UNARY_ACTIVATION_CODE } from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import { backendOf, type Overrides, prod, type TensorInfo, values } from './helpers.js';
import { broadcastShapes, broadcastStrides } from './shapes.js';

export function registerElementwise({ tf, native, cpu, add }: Overrides): void {
  const binary = (kernelName: string, op: number, outDtype: 'float32' | 'bool' = 'float32') =>
    add(kernelName, (args) => {
      const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
      if (a.dtype !== 'float32' || b.dtype !== 'float32') return cpu(kernelName)(args);
      const backend = backendOf(args);
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

  // Elementwise unaries (AdamW's sqrt/square, activations, ...): one monomorphic loop each instead
  // of the cpu backend's shared per-element callback. Same formulas, so the same float32 results.
  const unary = (kernelName: string, loop: (x: Float32Array, out: Float32Array) => void) =>
    add(kernelName, (args) => {
      const { x } = args.inputs as { x: TensorInfo };
      if (x.dtype !== 'float32') return cpu(kernelName)(args);
      const backend = backendOf(args);
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
      const backend = backendOf(args);
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
}
