/**
 * Softmax over the last axis, row by row on the native pool: out[r, j] = exp(x[r, j] - max_r) /
 * sum_j' exp(x[r, j'] - max_r). Other axes go through the stock cpu kernel.
 */
import { outputArray } from '../storage.js';
import { backendOf, type Overrides, prod, type TensorInfo, values } from './helpers.js';

export function registerSoftmax({ tf, native, cpu, add }: Overrides): void {
  add(tf.Softmax, (args) => {
    const { logits } = args.inputs as { logits: TensorInfo };
    const { dim } = args.attrs as { dim: number };
    const rank = logits.shape.length;
    if (logits.dtype !== 'float32' || rank === 0 || (dim !== -1 && dim !== rank - 1)) return cpu(tf.Softmax)(args);
    const backend = backendOf(args);
    const cols = logits.shape[rank - 1];
    const out = outputArray(prod(logits.shape));
    if (out.length > 0) native.softmax(values(backend, logits), out, out.length / cols, cols);
    return backend.makeTensorInfo(logits.shape, 'float32', out);
  });
}
