/**
 * Fused causal attention and RoPE (@moelab/core/kernels: CAUSAL_ATTENTION_KERNEL, its Grad kernel,
 * ROPE_KERNEL) as tfjs kernels for the moelab-cpu backend, and their gradients. Core's
 * `causalAttention` / `applyRope` call these when the backend has them (the op-by-op tfjs version
 * stays for every other backend).
 *
 * Why fused: op by op, one attention layer allocates several [B, H, T, T] tensors per pass (scores,
 * scaled, masked, probabilities, and as many again in the backward pass) and RoPE is seven small
 * ops (slices, negation, concat, two products, a sum). In a profile of the anchor's 4-layer LM step
 * these were ~30% of the step. Here one task per (batch, head) keeps its scores in a per-thread
 * scratch buffer and skips the masked half of the score GEMMs.
 *
 *   out_i = sum_{j<=i} softmax_j(scale q_i.k_j) v_j,  lse_i = log sum_{j<=i} exp(scale q_i.k_j)
 *   backward, with P = exp(S - lse), D_i = sum_c dy_ic out_ic: dS = P (dy v^T - D),
 *   dq = scale dS k, dk = scale dS^T q, dv = P^T dy
 *   RoPE: rotate-half of the first `dims` channels; its gradient is the inverse rotation.
 */
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type * as tfTypes from '@tensorflow/tfjs';
import { causalAttentionShapes, expectCausalAttentionGradInputs, layoutOf, ropeShapes, scaleOf, shaped } from './attention-checks.js';
import { type Args, type KernelConfig, type KernelFunc, type Tensor, type TensorInfo, type Tf, values } from './helpers.js';
import {
  CAUSAL_ATTENTION_GRAD_KERNEL,
  CAUSAL_ATTENTION_KERNEL,
  type CausalAttentionGradInputs,
  ROPE_KERNEL,
  type RopeAttrs,
  type RopeInputs,
} from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import type { NativeAddon } from '../native.js';

export function makeAttentionKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const be = (args: Args) => args.backend as unknown as MathBackendCPU;

  const forward = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const scale = scaleOf(CAUSAL_ATTENTION_KERNEL, args.attrs);
    const bthd = layoutOf(CAUSAL_ATTENTION_KERNEL, args.attrs);
    const { B, H, T, dk, dv } = causalAttentionShapes(CAUSAL_ATTENTION_KERNEL, inputs, bthd);
    const BH = B * H;
    const out = outputArray(BH * T * dv);
    const lse = new Float32Array(BH * T);
    const v = (n: string) => values(backend, inputs[n]);
    if (out.length > 0) native.causalAttentionForward(v('q'), v('k'), v('v'), out, lse, BH, T, dk, dv, scale, H, bthd);
    return [backend.makeTensorInfo(shaped(bthd, B, H, T, dv), 'float32', out), backend.makeTensorInfo([B, H, T], 'float32', lse)];
  };

  const backward = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const scale = scaleOf(CAUSAL_ATTENTION_GRAD_KERNEL, args.attrs);
    const bthd = layoutOf(CAUSAL_ATTENTION_GRAD_KERNEL, args.attrs);
    const { B, H, T, dk, dv } = causalAttentionShapes(CAUSAL_ATTENTION_GRAD_KERNEL, inputs, bthd);
    expectCausalAttentionGradInputs(CAUSAL_ATTENTION_GRAD_KERNEL, inputs, bthd, { B, H, T, dv });
    const BH = B * H;
    const dq = outputArray(BH * T * dk);
    const dkOut = outputArray(BH * T * dk);
    const dvOut = outputArray(BH * T * dv);
    const v = (n: string) => values(backend, inputs[n]);
    if (BH * T > 0) {
      native.causalAttentionBackward(v('dy'), v('q'), v('k'), v('v'), v('out'), v('lse'), dq, dkOut, dvOut, BH, T, dk, dv, scale, H, bthd);
    }
    return [
      backend.makeTensorInfo(inputs.q.shape, 'float32', dq),
      backend.makeTensorInfo(inputs.q.shape, 'float32', dkOut),
      backend.makeTensorInfo(inputs.v.shape, 'float32', dvOut),
    ];
  };

  const rope = (args: Args): TensorInfo => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const { x, cos } = inputs;
    const bthd = layoutOf(ROPE_KERNEL, args.attrs);
    const { B, H, T, dh, dims } = ropeShapes(ROPE_KERNEL, inputs, bthd);
    const out = outputArray(B * H * T * dh);
    if (out.length > 0)
      native.rope(values(backend, x), values(backend, cos), values(backend, inputs.sin), out, B * H, T, dh, dims, !!args.attrs?.inverse, H, bthd);
    return backend.makeTensorInfo(x.shape, 'float32', out);
  };

  return [
    { kernelName: CAUSAL_ATTENTION_KERNEL, backendName, kernelFunc: forward as unknown as KernelFunc },
    { kernelName: CAUSAL_ATTENTION_GRAD_KERNEL, backendName, kernelFunc: backward as unknown as KernelFunc },
    { kernelName: ROPE_KERNEL, backendName, kernelFunc: rope as unknown as KernelFunc },
  ];
}

/** Gradients of the fused attention and RoPE kernels (see registerMoeGradients for the pattern). */
export function registerAttentionGradients(tf: Tf): void {
  tf.registerGradient({
    kernelName: CAUSAL_ATTENTION_KERNEL,
    inputsToSave: ['q', 'k', 'v'],
    outputsToSave: [true, true],
    gradFunc: (dy, saved, attrs) => {
      const dOut = Array.isArray(dy) ? dy[0] : dy;
      const [q, k, v, out, lse] = saved;
      const [dq, dk, dv] = tf
        .engine()
        .runKernel(
          CAUSAL_ATTENTION_GRAD_KERNEL,
          { dy: dOut, q, k, v, out, lse } satisfies CausalAttentionGradInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
          attrs as tfTypes.NamedAttrMap,
        ) as Tensor[];
      return { q: () => dq, k: () => dk, v: () => dv };
    },
  });
  tf.registerGradient({
    kernelName: ROPE_KERNEL,
    inputsToSave: ['cos', 'sin'],
    gradFunc: (dy, saved, attrs) => {
      const [cos, sin] = saved;
      const inverse = !!(attrs as Partial<RopeAttrs> | undefined)?.inverse;
      // The tables are constants (no gradient flows into them).
      return {
        x: () =>
          tf
            .engine()
            .runKernel(
              ROPE_KERNEL,
              { x: dy as Tensor, cos, sin } satisfies RopeInputs<Tensor> as unknown as tfTypes.NamedTensorMap,
              { ...(attrs as unknown as RopeAttrs), inverse: !inverse } satisfies RopeAttrs as unknown as tfTypes.NamedAttrMap,
            ) as Tensor,
        cos: () => tf.zerosLike(cos),
        sin: () => tf.zerosLike(sin),
      };
    },
  });
}
