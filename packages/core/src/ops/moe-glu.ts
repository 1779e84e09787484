/**
 * Gated (GLU) MoE experts as one op:
 *
 *   out[t] = sum_{n: token n = t} weight[n] * (act(x[t] W1[e_n]) * (x[t] W3[e_n])) W2[e_n]
 *
 * (SwiGLU = silu gate, GeGLU = gelu, ReGLU = relu; Shazeer 2020, arXiv:2002.05202.) A backend that
 * registers the `MoelabMoeGLU` kernel (@moelab/kernels-cpu's moelab-cpu: gather, grouped GEMMs, gate
 * and weighted scatter-add fused, with its own backward) runs that; every other backend gets
 * `moeGLUGeneric`, built from stock tfjs ops (padded batched GEMMs). See docs/kernels.md.
 */
import type { Activation } from '../nn/activations.js';
import { activate } from '../nn/activations.js';
import type { DispatchPlan } from '../nn/dispatch.js';
import { tf } from '../tf.js';
import { isMoeActivation, MOE_GLU_KERNEL, type MoeGluAttrs, type MoeGluInputs } from '../kernels/contract.js';
import { hasKernel } from './kernel.js';
import { combine, gatherPadded, ungatherPadded } from './moe.js';

/**
 * The gated experts of the plan's assignments. x [T, d], w1 and w3 [E, d, h], w2 [E, h, d],
 * weight [N] (null = all ones). Returns [T, d]; differentiable w.r.t. x, the weights and `weight`.
 */
export function moeGLU(
  x: tf.Tensor2D,
  w1: tf.Tensor3D,
  w3: tf.Tensor3D,
  w2: tf.Tensor3D,
  plan: DispatchPlan,
  weight: tf.Tensor1D | null,
  activation: Activation,
): tf.Tensor2D {
  if (!isMoeActivation(activation) || !hasKernel(MOE_GLU_KERNEL)) return moeGLUGeneric(x, w1, w3, w2, plan, weight, activation);
  const [out, hidden] = tf.engine().runKernel(
    MOE_GLU_KERNEL,
    {
      x,
      w1,
      w3,
      w2,
      tokenIndex: tf.tensor1d(plan.tokenIndex, 'int32'),
      expertIndex: tf.tensor1d(plan.expertIndex, 'int32'),
      weight: weight ?? tf.ones([plan.size]),
    } satisfies MoeGluInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
    { activation } satisfies MoeGluAttrs as unknown as tf.NamedAttrMap,
  ) as tf.Tensor[];
  // The second output (what the kernel's backward needs) is held by the gradient tape.
  hidden!.dispose();
  return out as tf.Tensor2D;
}

/** `moeGLU` from stock tfjs ops, on any backend (same arguments). */
export const moeGLUGeneric: typeof moeGLU = (x, w1, w3, w2, plan, weight, activation) => {
  if (plan.size === 0) return tf.mul(x, 0) as tf.Tensor2D;
  const { xs, assignmentRow } = gatherPadded(x, plan);
  const u = tf.mul(activate(tf.matMul(xs, w1), activation), tf.matMul(xs, w3)) as tf.Tensor3D;
  return combine(ungatherPadded(tf.matMul(u, w2) as tf.Tensor3D, assignmentRow), weight, plan);
};
