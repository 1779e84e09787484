import { buildNode, corePlugin, createRegistry, forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { attention } from './index.js';
import { renormRows, type SwitchHead } from './switchhead.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, attention);
const build = (spec: Record<string, unknown>, d = 16) => {
  const m = buildNode<SwitchHead>(registry, 'attention', { type: 'switchhead', ...spec }, '$.block.attention', 0, { dModel: d });
  m.assignPaths('attention');
  return m;
};

describe('switchhead', () => {
  it('official parameter names and shapes, routed and dense-gated', () => {
    const shapes = (m: SwitchHead) => Object.fromEntries(m.namedParameters().map(([n, v]) => [n, v.shape]));
    expect(shapes(build({ heads: 2, headDim: 6, experts: 3, k: 2 }))).toEqual({
      sel_v: [6, 16],
      sel_o: [6, 16],
      'k.weight': [12, 16],
      'q.weight': [12, 16],
      v: [6, 16, 6],
      o: [6, 6, 16],
    });
    expect(shapes(build({ heads: 2, headDim: 6, experts: 1 }))).toEqual({
      sel_o: [2, 16],
      'k.weight': [12, 16],
      'q.weight': [12, 16],
      v: [12, 16],
      o: [16, 12],
    });
  });

  it('RoPE rotates floor(fraction·dh) channels rounded down to even (dh 82 -> 40, as the 44M checkpoints)', () => {
    expect(build({ heads: 1, headDim: 82, experts: 2, k: 1 }).nRotate).toBe(40);
    expect(build({ heads: 2, headDim: 12, experts: 2, k: 1 }).nRotate).toBe(6);
    expect(build({ heads: 2, headDim: 12, experts: 2, k: 1, rotateFraction: 0 }).nRotate).toBe(0);
  });

  it('rejects k > experts with the JSON path', () => {
    expect(() => build({ heads: 2, experts: 3, k: 4 })).toThrow(/\$\.block\.attention\.k: k = 4 exceeds the number of experts per head \(3\)/);
    expect(() => build({ heads: 3 })).toThrow(/\$\.block\.attention\.heads: dModel 16 is not divisible by heads 3/);
  });

  it('is causal: a change at position t leaves earlier outputs unchanged', () => {
    const rng = new Rng(3);
    for (const experts of [1, 4]) {
      const m = build({ heads: 2, experts, k: 2 });
      const a = rng.normalArray(1 * 6 * 16);
      const x1 = tf.tensor3d(a, [1, 6, 16]);
      const b = a.slice();
      for (let i = 4 * 16; i < 6 * 16; i++) b[i]! += 1;
      const y1 = m.forward(x1, forwardContext(rng, false)).arraySync() as number[][][];
      const y2 = m.forward(tf.tensor3d(b, [1, 6, 16]), forwardContext(rng, false)).arraySync() as number[][][];
      for (let t = 0; t < 4; t++) for (let c = 0; c < 16; c++) expect(y2[0]![t]![c]).toBeCloseTo(y1[0]![t]![c]!, 5);
      expect(Math.abs(y2[0]![5]![0]! - y1[0]![5]![0]!)).toBeGreaterThan(1e-6);
    }
  });

  it('is invariant to permuting the experts of one head together with their router rows', () => {
    const rng = new Rng(5);
    const m = build({ heads: 2, experts: 3, k: 2 });
    const x = tf.tensor3d(rng.normalArray(2 * 5 * 16), [2, 5, 16]);
    const y0 = m.forward(x, forwardContext(rng, false)).dataSync();
    const perm = tf.tensor1d([2, 0, 1, 3, 4, 5], 'int32'); // head 0's experts permuted, head 1 untouched
    for (const v of [m.v, m.o, m.selV!, m.selO]) v.assign(tf.gather(v, perm));
    const y1 = m.forward(x, forwardContext(rng, false)).dataSync();
    for (let i = 0; i < y0.length; i++) expect(y1[i]).toBeCloseTo(y0[i]!, 5);
  });

  it('regulariser: o and v terms once per forward pass, over every call, only in training', () => {
    const rng = new Rng(7);
    const m = build({ heads: 2, experts: 4, k: 2 });
    const x = tf.tensor3d(rng.normalArray(2 * 5 * 16), [2, 5, 16]);
    const ev = forwardContext(rng, false);
    m.forward(x, ev);
    m.finalizeForward(ev);
    expect(ev.aux).toHaveLength(0);
    const ctx = forwardContext(rng, true);
    m.forward(x, ctx);
    m.forward(x, ctx);
    m.finalizeForward(ctx);
    expect(ctx.aux.map((a) => [a.name, a.coef])).toEqual([
      ['att_entropy_o', 0.001],
      ['att_entropy_v', 0.001],
    ]);
    // two identical calls: the mean over time × repeats equals the mean over one call's time
    const one = forwardContext(rng, true);
    m.forward(x, one);
    m.finalizeForward(one);
    for (let i = 0; i < 2; i++) {
      const v = ctx.aux[i]!.value.dataSync()[0]!;
      expect(v).toBeCloseTo(one.aux[i]!.value.dataSync()[0]!, 6);
      expect(v).toBeLessThanOrEqual(0);
      expect(v).toBeGreaterThanOrEqual(-Math.log(4) - 1e-6);
    }
  });

  it('init: router rows renormalised with norms proportional to their std (renorm_rows)', () => {
    const rng = new Rng(9);
    const w0 = rng.normalArray(4 * 32, 1);
    for (let c = 0; c < 32; c++) w0[c]! *= 3; // row 0 has 3x the std
    const w = renormRows(w0, 4, 32);
    const norm = (r: number) => Math.hypot(...w.subarray(r * 32, r * 32 + 32));
    expect(norm(0) / norm(1)).toBeGreaterThan(2);
  });

  it('finite-difference gradients (params and the three inputs, regulariser included)', () => {
    const rng = new Rng(11);
    for (const experts of [1, 3]) {
      const m = build({ heads: 2, headDim: 4, experts, k: 2, balanceCoef: 0.3 }, 8);
      const q = tf.variable(tf.tensor3d(rng.normalArray(2 * 4 * 8), [2, 4, 8]));
      const k = tf.variable(tf.tensor3d(rng.normalArray(2 * 4 * 8), [2, 4, 8]));
      const v = tf.variable(tf.tensor3d(rng.normalArray(2 * 4 * 8), [2, 4, 8]));
      const R = tf.tensor3d(rng.normalArray(2 * 4 * 8), [2, 4, 8]);
      const loss = () => {
        const ctx = forwardContext(rng, true);
        let l = tf.sum(tf.mul(m.forward(q, ctx, { q, k, v }), R));
        m.finalizeForward(ctx);
        for (const a of ctx.aux) l = tf.add(l, tf.mul(a.value, a.coef));
        return l as tf.Scalar;
      };
      const vars = [q, k, v, ...m.trainableVariables()];
      const { grads } = tf.variableGrads(loss, vars);
      const drng = new Rng(12);
      for (const w of vars) {
        const dir = tf.tensor(drng.normalArray(w.size), w.shape);
        const analytic = tf.sum(tf.mul(grads[w.name]!, dir)).dataSync()[0]!;
        const orig = w.clone();
        const errs = [1e-2, 3e-3, 1e-3, 3e-4].map((eps) => {
          w.assign(tf.add(orig, tf.mul(dir, eps)));
          const fp = loss().dataSync()[0]!;
          w.assign(tf.sub(orig, tf.mul(dir, eps)));
          const fm = loss().dataSync()[0]!;
          w.assign(orig);
          return Math.abs(analytic - (fp - fm) / (2 * eps)) / Math.max(Math.abs(analytic), 1e-2);
        });
        expect(Math.min(...errs)).toBeLessThan(5e-3);
      }
    }
  });
});
