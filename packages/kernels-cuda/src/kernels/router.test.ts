import * as tf from '@tensorflow/tfjs';
import { SOFTMAX_TOPK_KERNEL } from '@moelab/core/kernels';
import { describe, expect, it } from 'vitest';
import { fallbackCounts, resetFallbackCounts } from '../backend.js';
import { compare, NAME, randArray, rng, skipReason, type Spec, status } from '../testing/helpers.js';

/** The fused gate: [weight [k,T], expert [k,T]]. */
const gate = (scores: tf.Tensor, bias: tf.Tensor, k: number, renormalize: boolean) =>
  tf.engine().runKernel(SOFTMAX_TOPK_KERNEL, { scores, bias }, { k, renormalize }) as tf.Tensor[];

/** The gate from stock ops (finite scores, no ties): softmax, top-k of scores + bias, gather, renormalise, slot-major. */
function gateReference(scores: tf.Tensor, bias: tf.Tensor, k: number, renormalize: boolean): tf.Tensor[] {
  const p = tf.softmax(scores);
  // The selection has no gradient: take it on a copy outside the tape.
  const fixed = tf.tensor(scores.dataSync(), scores.shape);
  const { indices } = tf.topk(bias.size > 0 ? tf.add(fixed, bias) : fixed, k);
  // p at the chosen experts, through a one-hot mask (tfjs's batched gather has no gradient)
  let w = tf.sum(tf.mul(tf.expandDims(p, 1), tf.oneHot(indices, scores.shape[1]!)), 2);
  if (renormalize) w = tf.div(w, tf.sum(w, 1, true));
  return [tf.transpose(w), tf.transpose(indices)];
}

/** Forward outputs and the gradient of sum(weight * probe) w.r.t. the scores. */
const withGrad =
  (f: typeof gate, k: number, renormalize: boolean) =>
  (scores: tf.Tensor, bias: tf.Tensor, probe: tf.Tensor): tf.Tensor[] => [
    ...f(scores, bias, k, renormalize),
    tf.grad((s: tf.Tensor) => tf.sum(tf.mul(f(s, bias, k, renormalize)[0]!, probe)))(scores),
  ];

describe.skipIf(!status.available)(`MoelabSoftmaxTopK on ${NAME}${skipReason}`, () => {
  for (const renormalize of [true, false]) {
    for (const biased of [false, true]) {
      it(`forward and gradient vs stock ops on cpu (${renormalize ? 'renormalised' : 'raw'}, ${biased ? 'with' : 'no'} bias)`, async () => {
        const r = rng(renormalize ? 61 : 62);
        const [T, E, k] = [9, 6, 2];
        const specs: Spec[] = [
          { shape: [T, E], data: randArray(r, T * E, 2) },
          biased ? { shape: [E], data: randArray(r, E) } : { shape: [0], data: new Float32Array(0) },
          { shape: [k, T], data: randArray(r, k * T) },
        ];
        resetFallbackCounts(NAME);
        await compare(specs, withGrad(gateReference as typeof gate, k, renormalize) as never, 1e-5, withGrad(gate, k, renormalize) as never);
        expect(fallbackCounts(NAME)).toEqual({});
      });
    }
  }

  it.skipIf(!tf.getKernel(SOFTMAX_TOPK_KERNEL, 'moelab-cpu'))('ties, -Infinity and NaN scores: the same choices and gradients as moelab-cpu', async () => {
    const inf = Number.NEGATIVE_INFINITY;
    const specs: Spec[] = [
      { shape: [4, 5], data: Float32Array.from([1, 2, 2, 2, 0, inf, 3, inf, inf, inf, inf, inf, inf, inf, inf, 0.5, Number.NaN, 0.5, 1, inf]) },
      { shape: [0], data: new Float32Array(0) },
      { shape: [3, 4], data: randArray(rng(63), 12) },
    ];
    for (const renormalize of [true, false]) {
      await compare(specs, withGrad(gate, 3, renormalize) as never, 1e-6, undefined, 'moelab-cpu');
    }
    await tf.setBackend(NAME);
    const [w, e] = gate(tf.tensor2d(specs[0]!.data as Float32Array, [4, 5]), tf.zeros([0]), 3, true);
    // row 0: ties among the 2s go to the lower index; row 1: one finite entry; row 2: none
    expect(Array.from(e!.dataSync())).toEqual([1, 1, -1, 3, 2, -1, -1, 0, 3, -1, -1, 2]);
    tf.dispose([w!, e!]);
  });
});
