import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { SparseMixerRouter, sparseMixerChoices, sparseMixerWeights } from './sparsemixer.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('sparsemixer-v2 (GRIN)', () => {
  it('eval selects the top-2 of z in order, with ω = 1 and weights in (0, 1]', () => {
    const rng = new Rng(1);
    const T = 20;
    const E = 6;
    const z = rng.normalArray(T * E, 2);
    const { chosen, omega } = sparseMixerChoices(z, T, E, 2, 0.01, false, rng);
    for (let t = 0; t < T; t++) {
      const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => z[t * E + b]! - z[t * E + a]!);
      expect([chosen[t * 2], chosen[t * 2 + 1]]).toEqual(order.slice(0, 2));
      expect(omega[0]![t]).toBe(1);
      expect(omega[1]![t]).toBe(1);
    }
    const r = new SparseMixerRouter(
      4,
      E,
      { k: 2, jitterEps: 0.01, balanceCoef: 1e-3, balanceCounts: 'all', balanceScope: 'batch', balanceParity: 'canonical', zLossCoef: 0 },
      rng,
    );
    const { weight } = r.route(tf.tensor2d(rng.normalArray(T * 4), [T, 4]), forwardContext(rng, false));
    for (const w of weight!.dataSync()) {
      expect(w).toBeGreaterThan(0);
      expect(w).toBeLessThanOrEqual(1 + 1e-6);
    }
  });

  it('the mask keeps the logits within the 2r relative band of the max; training samples only unmasked experts', () => {
    const z = new Float32Array([10, 9.9, 9.0, 2, 9.95, -3]);
    const { masks, chosen } = sparseMixerChoices(z, 1, 6, 1, 0.01, false, new Rng(1));
    // (10 − z)/max(|z|, 10) > 0.02 masks: 9.9 (0.01) and 9.95 stay, 9.0 (0.1) is masked
    expect(Array.from(masks[0]!).map((m) => m === 0)).toEqual([true, true, false, false, true, false]);
    expect(chosen[0]).toBe(0);
    const seen = new Set<number>();
    const rng = new Rng(2);
    for (let i = 0; i < 200; i++) seen.add(sparseMixerChoices(z, 1, 6, 1, 0.01, true, rng).chosen[0]!);
    expect(seen).toEqual(new Set([0, 1, 4]));
  });

  it('custom gradient = g·π_D(e_D − π) (ω excluded) = finite differences of the surrogate Σ c_s π_D', () => {
    const rng = new Rng(3);
    const T = 5;
    const E = 5;
    // logits close together so several experts stay unmasked with r = 0.2
    const z = rng.normalArray(T * E, 0.3);
    const { chosen, masks, omega } = sparseMixerChoices(z, T, E, 2, 0.2, true, rng);
    omega[0]![0] = 1 / 3; // make sure ω ≠ 1 somewhere: it must not enter the gradient
    const c = tf.tensor2d(rng.normalArray(T * 2), [T, 2]);
    const zt = tf.tensor2d(z, [T, E]);
    const g = tf
      .grad((l: tf.Tensor) => tf.sum(tf.mul(sparseMixerWeights(l as tf.Tensor2D, chosen, masks, omega), c)))(zt)
      .arraySync() as number[][];
    const cs = c.arraySync() as number[][];
    const surrogate = (zz: Float32Array) => {
      let s = 0;
      for (let t = 0; t < T; t++)
        for (let k = 0; k < 2; k++) {
          const m = masks[k]!;
          const row = Array.from({ length: E }, (_, e) => (m[t * E + e] === 0 ? zz[t * E + e]! : Number.NEGATIVE_INFINITY));
          const mx = Math.max(...row);
          const ex = row.map((v) => Math.exp(v - mx));
          const sum = ex.reduce((a, b) => a + b, 0);
          s += cs[t]![k]! * (ex[chosen[t * 2 + k]!]! / sum);
        }
      return s;
    };
    const h = 1e-3;
    for (let i = 0; i < T * E; i++) {
      const up = Float64Array.from(z) as unknown as Float32Array;
      const dn = Float64Array.from(z) as unknown as Float32Array;
      up[i]! += h;
      dn[i]! -= h;
      const fd = (surrogate(up) - surrogate(dn)) / (2 * h);
      expect(g[Math.floor(i / E)]![i % E]).toBeCloseTo(fd, 3);
      // masked logits get no gradient
      if (masks[0]![i] !== 0 && masks[1]![i] !== 0) expect(g[Math.floor(i / E)]![i % E]).toBe(0);
    }
    // forward includes ω
    const w = sparseMixerWeights(zt, chosen, masks, omega).arraySync() as number[][];
    const w1 = sparseMixerWeights(zt, chosen, masks, [new Float32Array(T).fill(1), new Float32Array(T).fill(1)]).arraySync() as number[][];
    expect(w[0]![0]).toBeCloseTo(w1[0]![0]! / 3, 6);
  });

  it('rejects k > experts; a tiny sparsemixer LM learns', () => {
    expect(() => makeRouter({ type: 'sparsemixer', k: 5 })).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds the number of experts \(4\)/);
    expect(() => makeRouter({ type: 'sparsemixer', jitterEps: -0.1 })).toThrow(/\$\.block\.ffn\.router\.jitterEps/);
    expect(lossRatio(trainLosses(tinyLM({ type: 'sparsemixer' })))).toBeLessThan(0.85);
  });
});
