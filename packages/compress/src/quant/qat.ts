/**
 * Short quantization-aware training before packing (MoQE's recovery for 2 bits, arXiv 2310.02410),
 * docs/compression.md#quantization-aware-training. The targets (the routed experts by default) keep a
 * float master copy W; every step runs the model with the quantized weights Q(W) and applies the
 * gradient taken there to the master copy, the straight-through estimator:
 *
 *   Ŵ = Q(W);   g = ∂L/∂Ŵ;   W ← W − Adam(g)        (∂Q/∂W taken as the identity)
 *
 * L is the next-token cross-entropy on the training windows; every other parameter stays frozen.
 * After the last step the variables hold the master copy again, so `quantizeModel` packs Q(W).
 */
import { crossEntropy, forwardContext, MoelabError, Rng, tf } from '@moelab/core';
import type { Model } from '../surgery.js';
import { selectTargets } from './format.js';
import { dequantizeTensor, type QuantOptions, quantizeTensor } from './quantize.js';

export interface QATOptions extends QuantOptions {
  /** Parameter globs (default: the routed experts, as `quantizeModel`). */
  targets?: readonly string[];
  /** Optimiser steps (≥ 1). */
  steps: number;
  /** Adam learning rate (default 1e-3). */
  lr?: number;
  /** Windows per step (default 8). */
  batchSize?: number;
}

export interface QATReport {
  /** Parameters trained. */
  targets: string[];
  /** Training loss of each step (at the quantized weights). */
  losses: number[];
}

function setValue(v: tf.Variable, data: Float32Array): void {
  tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
}

/** Q(W) of one parameter: quantize, then dequantize, in the parameter's own layout. */
function fakeQuant(v: tf.Variable, o: QuantOptions): Float32Array {
  return dequantizeTensor(quantizeTensor(v.dataSync() as Float32Array, v.shape, o));
}

/** Train the targets of `model` (in place) with the straight-through estimator on `windows` ([T + 1] token ids each). */
export function quantizationAwareTraining(model: Model, windows: Int32Array[], o: QATOptions): QATReport {
  if (!(Number.isInteger(o.steps) && o.steps >= 1)) throw new MoelabError(`the QAT steps must be a positive integer, got ${o.steps}`, '--qat-steps');
  const lr = o.lr ?? 1e-3;
  if (!(lr > 0)) throw new MoelabError(`the QAT learning rate must be positive, got ${lr}`, '--qat-lr');
  if (windows.length === 0) throw new MoelabError('quantization-aware training has no windows to train on', '--data');
  const batchSize = o.batchSize ?? 8;
  const targets = selectTargets(model, o.targets);
  const params = new Map(model.namedParameters());
  const vars = targets.map((name) => {
    const v = params.get(name);
    if (!(v instanceof tf.Variable)) throw new MoelabError('this parameter is not a trainable variable', name);
    return v;
  });
  const master = vars.map((v) => (v.dataSync() as Float32Array).slice());
  const optimizer = tf.train.adam(lr);
  const losses: number[] = [];
  try {
    for (let step = 0; step < o.steps; step++) {
      const quantized = vars.map((v, i) => {
        setValue(v, master[i]!);
        const q = fakeQuant(v, o);
        setValue(v, q);
        return q;
      });
      const part = Array.from({ length: Math.min(batchSize, windows.length) }, (_, b) => windows[(step * batchSize + b) % windows.length]!);
      const T1 = part[0]!.length;
      const flat = new Int32Array(part.length * T1);
      for (const [b, w] of part.entries()) flat.set(w, b * T1);
      const loss = tf.tidy(() => {
        const batch = tf.tensor2d(flat, [part.length, T1], 'int32');
        const l = optimizer.minimize(
          () => {
            const logits = model.forward(tf.slice(batch, [0, 0], [part.length, T1 - 1]), forwardContext(new Rng(step), false, { stats: false }));
            return crossEntropy(logits, tf.slice(batch, [0, 1], [part.length, T1 - 1])) as tf.Scalar;
          },
          true,
          vars,
        );
        return l!.dataSync()[0]!;
      });
      losses.push(loss);
      // The optimiser moved Q(W) by Δ; the straight-through estimator moves W by the same Δ.
      vars.forEach((v, i) => {
        const moved = v.dataSync() as Float32Array;
        const m = master[i]!;
        const q = quantized[i]!;
        for (let k = 0; k < m.length; k++) m[k]! += moved[k]! - q[k]!;
      });
    }
  } finally {
    vars.forEach((v, i) => {
      setValue(v, master[i]!);
    });
    optimizer.dispose();
  }
  return { targets, losses };
}
