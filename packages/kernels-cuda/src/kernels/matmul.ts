/**
 * BatchMatMul and _FusedMatMul on the tiled CUDA GEMM:
 *
 *   out[b] = act(op(a[b_a]) op(b[b_b]) + bias),  op = transpose or not
 *
 * Batch axes broadcast when one side has a single batch or both have the same batch shape; other
 * broadcasts, other dtypes, a bias not over the last axis and prelu go to the host fallback.
 */
import { FUSED_MATMUL_ACTIVATION_CODE } from '@moelab/core/kernels';
import { type Args, backendOf, type Ctx, inputs, prod, type TensorInfo } from './context.js';

const FUSED_ACT = new Map<string, number>(Object.entries(FUSED_MATMUL_ACTIVATION_CODE));

export function registerMatmul({ tf, native, fallback, add }: Ctx): void {
  function run(args: Args, name: string, bias: TensorInfo | undefined, act: number, alpha: number): TensorInfo | null {
    const { a, b } = inputs(args);
    const { transposeA: tA, transposeB: tB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return null;
    const ar = a.shape.length;
    const br = b.shape.length;
    const M = tA ? a.shape[ar - 1]! : a.shape[ar - 2]!;
    const K = tA ? a.shape[ar - 2]! : a.shape[ar - 1]!;
    const K2 = tB ? b.shape[br - 1]! : b.shape[br - 2]!;
    const N = tB ? b.shape[br - 2]! : b.shape[br - 1]!;
    if (K !== K2) {
      throw new Error(
        `${name}: inner shapes (${K}) and (${K2}) of tensors with shapes ${a.shape} and ${b.shape} and transposeA=${tA} and transposeB=${tB} must match`,
      );
    }
    const aBatch = a.shape.slice(0, -2);
    const bBatch = b.shape.slice(0, -2);
    const outBatch = tf.backend_util.assertAndGetBroadcastShape(aBatch, bBatch);
    const batch = prod(outBatch);
    const nA = prod(aBatch);
    const nB = prod(bBatch);
    const same = (x: number[], y: number[]) => x.length === y.length && x.every((v, i) => v === y[i]);
    if (!(nA === 1 || same(aBatch, outBatch)) || !(nB === 1 || same(bBatch, outBatch))) return null;
    if (bias && !(bias.dtype === 'float32' && prod(bias.shape) === N && (bias.shape.length <= 1 || bias.shape[bias.shape.length - 1] === N))) return null;
    const backend = backendOf(args);
    const out = backend.makeOutput([...outBatch, M, N], 'float32');
    if (batch * M * N > 0) {
      native.gemm(
        { A: backend.dev(a), B: backend.dev(b), C: out.ptr, bias: bias ? backend.dev(bias) : null },
        { ta: tA, tb: tB, batch, M, N, K, strideA: nA === 1 ? 0 : M * K, strideB: nB === 1 ? 0 : K * N, act, alpha },
      );
    }
    return out.info;
  }

  add('BatchMatMul', (args) => run(args, 'BatchMatMul', undefined, 0, 0) ?? fallback('BatchMatMul')(args));
  add('_FusedMatMul', (args) => {
    const { bias, preluActivationWeights } = inputs(args);
    const { activation, leakyreluAlpha } = args.attrs as { activation: string; leakyreluAlpha?: number };
    const act = FUSED_ACT.get(activation);
    if (act === undefined || preluActivationWeights) return fallback('_FusedMatMul')(args);
    return run(args, '_FusedMatMul', bias, act, leakyreluAlpha ?? 0.2) ?? fallback('_FusedMatMul')(args);
  });
}
