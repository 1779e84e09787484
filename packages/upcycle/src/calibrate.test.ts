import { buildModel, crossEntropy, forwardContext, loadState, Rng, tf } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { denseSpec, registry, source } from '../test/helpers.js';
import { ffnInputs, ffnOutputGrads, hiddenActivations } from './calibrate.js';
import type { WeightMap } from './weights.js';

const seed = source('glu', denseSpec({ layers: 2 }), 7);
const seq = Int32Array.from({ length: 13 }, (_, t) => (t * 29 + 5) % 256);

/** ℓ = Σ_t −log p(x_{t+1}) of the sequence under `weights`. */
function summedLoss(weights: WeightMap): number {
  const m = buildModel(seed.spec, registry(), 0);
  loadState(m, weights);
  const T = seq.length - 1;
  const v = tf.tidy(() => {
    const logits = m.forward(tf.tensor2d(seq.subarray(0, T), [1, T], 'int32'), forwardContext(new Rng(0), false));
    return crossEntropy(logits, tf.tensor2d(seq.subarray(1), [1, T], 'int32')).dataSync()[0]! * T;
  });
  m.dispose();
  return v;
}

describe('calibration statistics', () => {
  it('FFN inputs and output gradients: Σ_t g_t a_tj matches the finite-difference gradient of ℓ in W2[o, j]', () => {
    const [rec] = ffnOutputGrads(registry(), seed, [seq], [0, 1]);
    const inputs = ffnInputs(registry(), seed, [seq], [1], 100).get(1)!;
    expect(rec!.inputs.get(1)!.length).toBe(12);
    expect(Array.from(rec!.inputs.get(1)![3]!)).toEqual(Array.from(inputs[3]!));
    const l = 1;
    const p = `transformer.layers.${l}.ffn`;
    const a = hiddenActivations(rec!.inputs.get(l)!, seed.weights.get(`${p}.w1.weight`)!, seed.weights.get(`${p}.w3.weight`), 'silu');
    const w2 = seed.weights.get(`${p}.w2.weight`)!; // [d, h]
    const [d, h] = w2.shape as [number, number];
    for (const [o, j] of [
      [2, 5],
      [9, 30],
    ] as const) {
      let analytic = 0;
      rec!.grads.get(l)!.forEach((g, t) => {
        analytic += g[o]! * a[t * h + j]!;
      });
      const eps = 0.05;
      const moved = (s: number): WeightMap => {
        const w = new Map(seed.weights);
        const data = Float32Array.from(w2.data);
        data[o * h + j]! += s * eps;
        w.set(`${p}.w2.weight`, { shape: [d, h], data });
        return w;
      };
      const numeric = (summedLoss(moved(1)) - summedLoss(moved(-1))) / (2 * eps);
      expect(Math.abs(analytic - numeric)).toBeLessThan(0.02 * Math.abs(numeric) + 1e-3);
      expect(Math.abs(analytic)).toBeGreaterThan(1e-3);
    }
  });
});
