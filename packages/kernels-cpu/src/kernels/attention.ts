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
import { type Args, expectDtype, expectShape, type KernelConfig, type KernelFunc, type Tensor, type TensorInfo, type Tf, values } from './helpers.js';
import {
  ATTENTION_LAYOUTS,
  type AttentionLayout,
  CAUSAL_ATTENTION_GRAD_KERNEL,
  CAUSAL_ATTENTION_KERNEL,
  type CausalAttentionGradInputs,
  ROPE_KERNEL,
  type RopeAttrs,
  type RopeInputs,
} from '@moelab/core/kernels';
import { outputArray } from '../storage.js';
import type { NativeAddon } from '../native.js';

/** 'bhtd' (default): tensors are [B, H, T, d]; 'bthd': [B, T, H, d], the projections' own layout. Returns whether bthd. */
function layoutOf(kernel: string, attrs: unknown): boolean {
  const layout = (attrs as { layout?: unknown } | undefined)?.layout ?? 'bhtd';
  if (!ATTENTION_LAYOUTS.includes(layout as AttentionLayout)) {
    throw new Error(`${kernel}: attr layout must be ${ATTENTION_LAYOUTS.map((l) => `'${l}'`).join(' or ')}, got '${String(layout)}'`);
  }
  return layout === 'bthd';
}

/** The shape of a [B, H, T, d] or [B, T, H, d] tensor in the given layout. */
const shaped = (bthd: boolean, B: number, H: number, T: number, d: number) => (bthd ? [B, T, H, d] : [B, H, T, d]);

function attentionShapes(kernel: string, inputs: Record<string, TensorInfo>, bthd: boolean) {
  expectDtype(kernel, inputs, ['q', 'k', 'v']);
  const { q, v } = inputs;
  const name = bthd ? 'B,T,H' : 'B,H,T';
  if (q.shape.length !== 4) throw new Error(`${kernel}: q must be [${name},dk], got [${q.shape}]`);
  const [B, a, b, dk] = q.shape;
  const [H, T] = bthd ? [b, a] : [a, b];
  expectShape(kernel, 'k', inputs.k, q.shape);
  if (v.shape.length !== 4) throw new Error(`${kernel}: v must be [${name},dv], got [${v.shape}]`);
  const dv = v.shape[3];
  expectShape(kernel, 'v', v, shaped(bthd, B, H, T, dv));
  return { B, H, T, dk, dv, BH: B * H };
}

function scaleOf(kernel: string, attrs: unknown): number {
  const scale = Number((attrs as { scale?: unknown } | undefined)?.scale);
  if (!Number.isFinite(scale)) throw new Error(`${kernel}: attr scale must be a finite number`);
  return scale;
}

export function makeAttentionKernels(native: NativeAddon, backendName: string): KernelConfig[] {
  const be = (args: Args) => args.backend as unknown as MathBackendCPU;

  const forward = (args: Args): TensorInfo[] => {
    const backend = be(args);
    const inputs = args.inputs as Record<string, TensorInfo>;
    const scale = scaleOf(CAUSAL_ATTENTION_KERNEL, args.attrs);
    const bthd = layoutOf(CAUSAL_ATTENTION_KERNEL, args.attrs);
    const { B, H, T, dk, dv, BH } = attentionShapes(CAUSAL_ATTENTION_KERNEL, inputs, bthd);
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
    const { B, H, T, dk, dv, BH } = attentionShapes(CAUSAL_ATTENTION_GRAD_KERNEL, inputs, bthd);
    expectDtype(CAUSAL_ATTENTION_GRAD_KERNEL, inputs, ['dy', 'out', 'lse']);
    expectShape(CAUSAL_ATTENTION_GRAD_KERNEL, 'dy', inputs.dy, shaped(bthd, B, H, T, dv));
    expectShape(CAUSAL_ATTENTION_GRAD_KERNEL, 'out', inputs.out, shaped(bthd, B, H, T, dv));
    expectShape(CAUSAL_ATTENTION_GRAD_KERNEL, 'lse', inputs.lse, [B, H, T]);
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
    expectDtype(ROPE_KERNEL, inputs, ['x', 'cos', 'sin']);
    const { x, cos } = inputs;
    const bthd = layoutOf(ROPE_KERNEL, args.attrs);
    if (x.shape.length !== 4) throw new Error(`${ROPE_KERNEL}: x must be [${bthd ? 'B,T,H' : 'B,H,T'},dh], got [${x.shape}]`);
    const [B, a, b, dh] = x.shape;
    const [H, T] = bthd ? [b, a] : [a, b];
    if (cos.shape.length !== 2 || cos.shape[0] !== T) throw new Error(`${ROPE_KERNEL}: cos must be [T=${T}, dims], got [${cos.shape}]`);
    const dims = cos.shape[1];
    if (dims % 2 !== 0 || dims > dh) throw new Error(`${ROPE_KERNEL}: rotated channels (${dims}) must be even and <= head size ${dh}`);
    expectShape(ROPE_KERNEL, 'sin', inputs.sin, [T, dims]);
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
