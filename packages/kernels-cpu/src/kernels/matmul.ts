/**
 * BatchMatMul and _FusedMatMul on the native GEMM (OpenBLAS or the built-in packed kernel):
 *
 *   out[b] = op(a[b_a]) op(b[b_b]),  op = transpose or not, batch axes broadcast numpy-style
 *   _FusedMatMul: act(out + bias), the bias over the last axis and the activation in one pass
 *
 * Everything else (other dtypes, a bias of another shape, prelu) goes through the stock cpu kernels.
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { FUSED_MATMUL_ACTIVATION_CODE } from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import { backendOf, type Overrides, prod, type TensorInfo, values } from './helpers.js';
import { batchMap, broadcastShapes } from './shapes.js';

// _FusedMatMul's activation attr -> native code (a Map: an attr such as 'toString' finds nothing).
const FUSED_ACT = new Map<string, number>(Object.entries(FUSED_MATMUL_ACTIVATION_CODE));

export function registerMatmul({ tf, native, cpu, add }: Overrides): void {
  function batchMatMul(backend: MathBackendCPU, a: TensorInfo, b: TensorInfo, tA: boolean, tB: boolean): TensorInfo {
    const ar = a.shape.length;
    const br = b.shape.length;
    const M = tA ? a.shape[ar - 1] : a.shape[ar - 2];
    const K = tA ? a.shape[ar - 2] : a.shape[ar - 1];
    const K2 = tB ? b.shape[br - 1] : b.shape[br - 2];
    const N = tB ? b.shape[br - 2] : b.shape[br - 1];
    if (K !== K2) {
      throw new Error(
        `Error in matMul: inner shapes (${K}) and (${K2}) of Tensors with shapes ${a.shape} and ${b.shape} and ` +
          `transposeA=${tA} and transposeB=${tB} must match.`,
      );
    }
    const aBatch = a.shape.slice(0, -2);
    const bBatch = b.shape.slice(0, -2);
    const outBatch = broadcastShapes(aBatch, bBatch);
    const batch = prod(outBatch);
    const out = outputArray(batch * M * N);
    if (out.length > 0) {
      native.sgemmBatched(
        tA,
        tB,
        batch,
        M,
        N,
        K,
        values(backend, a),
        batchMap(aBatch, outBatch),
        prod(aBatch),
        values(backend, b),
        batchMap(bBatch, outBatch),
        prod(bBatch),
        out,
      );
    }
    return backend.makeTensorInfo([...outBatch, M, N], 'float32', out);
  }

  add(tf.BatchMatMul, (args) => {
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return cpu(tf.BatchMatMul)(args);
    return batchMatMul(backendOf(args), a, b, transposeA, transposeB);
  });

  add(tf._FusedMatMul, (args) => {
    const backend = backendOf(args);
    const { a, b, bias, preluActivationWeights } = args.inputs as Record<string, TensorInfo | undefined>;
    const { transposeA, transposeB, activation, leakyreluAlpha } = args.attrs as {
      transposeA: boolean;
      transposeB: boolean;
      activation: string;
      leakyreluAlpha?: number;
    };
    if (!a || !b || a.dtype !== 'float32' || b.dtype !== 'float32' || (bias && bias.dtype !== 'float32')) {
      return cpu(tf._FusedMatMul)(args);
    }
    let out = batchMatMul(backend, a, b, transposeA, transposeB);
    const N = out.shape[out.shape.length - 1];
    const rows = N === 0 ? 0 : prod(out.shape) / N;
    // A bias over the last axis (the Dense-layer case) and the elementwise activations are fused
    // into one pass over the fresh output; anything else goes through the cpu kernels.
    const rowBias = bias !== undefined && bias.shape.length <= out.shape.length && prod(bias.shape) === N && bias.shape[bias.shape.length - 1] === N;
    let fusedBias = false;
    if (bias && !rowBias) {
      const withBias = cpu(tf.Add)({ inputs: { a: out, b: bias }, backend: args.backend, attrs: {} }) as TensorInfo;
      backend.disposeIntermediateTensorInfo(out);
      out = withBias;
    } else if (bias) {
      fusedBias = true;
    }
    const act = FUSED_ACT.get(activation ?? 'linear');
    const outValues = values(backend, out);
    if (act !== undefined) {
      if (fusedBias || act !== FUSED_MATMUL_ACTIVATION_CODE.linear) {
        native.biasAct(outValues, rows, N, fusedBias && bias ? values(backend, bias) : null, act, leakyreluAlpha ?? 0.2);
      }
      return out;
    }
    if (fusedBias && bias) native.biasAct(outValues, rows, N, values(backend, bias), FUSED_MATMUL_ACTIVATION_CODE.linear, 0);
    if (activation === 'prelu' && preluActivationWeights) {
      const r = cpu(tf.Prelu)({ inputs: { x: out, alpha: preluActivationWeights }, backend: args.backend, attrs: {} }) as TensorInfo;
      backend.disposeIntermediateTensorInfo(out);
      return r;
    }
    throw new Error(`moelab-cpu: _FusedMatMul activation '${activation}' is not supported`);
  });
}
