/**
 * The MoE expert ops. The MoE layer calls one op for dispatch + expert compute + combine, so every
 * backend can supply its best implementation as a tfjs kernel (e.g. @moelab/kernels-cpu registers
 * `MoelabMoeMLP` for its native backend). Backends without one get the generic version below, built
 * from stock tfjs ops (padded batched GEMMs), which works everywhere, browsers included.
 */
import type { Activation } from '../nn/activations.js';
import { activate } from '../nn/activations.js';
import { DispatchPlan } from '../nn/dispatch.js';
import { tf } from '../tf.js';
import {
  isMoeActivation,
  MOE_LINEAR_KERNEL,
  MOE_MLP_KERNEL,
  type MoeLinearAttrs,
  type MoeLinearInputs,
  type MoeMlpAttrs,
  type MoeMlpInputs,
} from '../kernels/contract.js';
import { hasKernel } from './kernel.js';

export { hasKernel };

/** Gather rows of `x` [T, d] into a padded [E, cap, d] block for the plan (padding rows are zero). */
export function gatherPadded(x: tf.Tensor2D, plan: DispatchPlan): { xs: tf.Tensor3D; assignmentRow: tf.Tensor1D; capacity: number } {
  const { capacity, gatherIndex, assignmentRow } = plan.padded();
  const d = x.shape[1];
  const withZero = tf.concat([x, tf.zeros([1, d])], 0);
  const xs = tf.reshape(tf.gather(withZero, tf.tensor1d(gatherIndex, 'int32')), [plan.numExperts, capacity, d]) as tf.Tensor3D;
  return { xs, assignmentRow: tf.tensor1d(assignmentRow, 'int32'), capacity };
}

/** Rows of a padded [E, cap, d] result belonging to each assignment, in plan order: [N, d]. */
export function ungatherPadded(ys: tf.Tensor3D, assignmentRow: tf.Tensor1D): tf.Tensor2D {
  const [E, cap, d] = ys.shape;
  return tf.gather(tf.reshape(ys, [E * cap, d]), assignmentRow) as tf.Tensor2D;
}

/** out[t] = sum over assignments n of token t of weight[n] * y[n]. */
export function combine(y: tf.Tensor2D, weight: tf.Tensor1D | null, plan: DispatchPlan): tf.Tensor2D {
  const scaled = weight ? tf.mul(y, tf.reshape(weight, [-1, 1])) : y;
  return tf.unsortedSegmentSum(scaled, plan.tokenIndexTensor(), plan.numTokens) as tf.Tensor2D;
}

/**
 * out[t] = sum_n weight[n] * act(x[t] W1[e_n]) W2[e_n] over the assignments (t, e_n) of the plan.
 * x [T, d], w1 [E, d, h], w2 [E, h, d], weight [N] (null = all ones). Returns [T, d].
 */
export function moeMLP(x: tf.Tensor2D, w1: tf.Tensor3D, w2: tf.Tensor3D, plan: DispatchPlan, weight: tf.Tensor1D | null, activation: Activation): tf.Tensor2D {
  if (isMoeActivation(activation) && hasKernel(MOE_MLP_KERNEL)) {
    const w = weight ?? tf.ones([plan.size]);
    // The kernel's second output (the pre-activations it saves for its backward pass) is internal:
    // the gradient tape keeps its own copy, so only `out` is handed back.
    const [out, hidden] = tf.engine().runKernel(
      MOE_MLP_KERNEL,
      {
        x,
        w1,
        w2,
        tokenIndex: tf.tensor1d(plan.tokenIndex, 'int32'),
        expertIndex: tf.tensor1d(plan.expertIndex, 'int32'),
        weight: w,
      } satisfies MoeMlpInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
      { activation } satisfies MoeMlpAttrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    hidden!.dispose();
    return out as tf.Tensor2D;
  }
  if (plan.size === 0) return tf.mul(x, 0) as tf.Tensor2D;
  const { xs, assignmentRow } = gatherPadded(x, plan);
  const h = activate(tf.matMul(xs, w1), activation) as tf.Tensor3D;
  const ys = tf.matMul(h, w2) as tf.Tensor3D;
  return combine(ungatherPadded(ys, assignmentRow), weight, plan);
}

/**
 * One expert-selected linear map: out[outRow[n]] += weight[n] * x[inRow[n]] W[e_n].
 * x [R, din], w [E, din, dout]. Returns [outRows, dout]. (SwitchHead's value / output projections.)
 */
export function moeLinear(
  x: tf.Tensor2D,
  w: tf.Tensor3D,
  inRow: Int32Array,
  outRow: Int32Array,
  expertIndex: Int32Array,
  weight: tf.Tensor1D | null,
  outRows: number,
): tf.Tensor2D {
  if (hasKernel(MOE_LINEAR_KERNEL)) {
    const wt = weight ?? tf.ones([inRow.length]);
    return tf.engine().runKernel(
      MOE_LINEAR_KERNEL,
      {
        x,
        w,
        inRow: tf.tensor1d(inRow, 'int32'),
        outRow: tf.tensor1d(outRow, 'int32'),
        expertIndex: tf.tensor1d(expertIndex, 'int32'),
        weight: wt,
      } satisfies MoeLinearInputs<tf.Tensor> as unknown as tf.NamedTensorMap,
      { outRows } satisfies MoeLinearAttrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor2D;
  }
  const dout = w.shape[2];
  if (inRow.length === 0) return tf.zeros([outRows, dout]);
  // The padded layout of a plan whose "tokens" are the input rows.
  const plan = new DispatchPlan(inRow, expertIndex, x.shape[0], w.shape[0]);
  const { xs, assignmentRow } = gatherPadded(x, plan);
  const y = ungatherPadded(tf.matMul(xs, w), assignmentRow);
  const scaled = weight ? tf.mul(y, tf.reshape(weight, [-1, 1])) : y;
  return tf.unsortedSegmentSum(scaled, tf.tensor1d(outRow, 'int32'), outRows) as tf.Tensor2D;
}
