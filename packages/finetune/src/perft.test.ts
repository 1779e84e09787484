import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { logitsOf, registry, tinyModel } from '../test/helpers.js';
import { AdaptedModel, type PerftBlockAdapter, type PerftE, type PerftR } from './index.js';

beforeAll(async () => {
  await tf.ready();
});

const x = () => tf.tensor2d(new Rng(5).normalArray(6 * 16), [6, 16]);
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i]!)));
/** Give B random values (B = 0 at init would make every equivalence trivial). */
function randomiseB(a: PerftBlockAdapter | PerftE, seed: number) {
  a.B.assign(tf.tensor(new Rng(seed).normalArray(a.B.size, 0.5), a.B.shape));
}
const ctx = () => forwardContext(new Rng(0), false);

describe('PERFT equivalences', () => {
  it("PERFT-R with M = 1, K' = 1 equals PERFT-S with the same A and B (the single weight is exactly 1)", () => {
    for (const renormalize of [true, false]) {
      const s = new AdaptedModel(tinyModel(), [{ type: 'perft-s', rank: 4 }], registry()).adapters[0] as PerftBlockAdapter;
      const r = new AdaptedModel(tinyModel(), [{ type: 'perft-r', experts: 1, topK: 1, rank: 4, renormalize }], registry()).adapters[0] as PerftR;
      randomiseB(s, 1);
      r.A.assign(s.A);
      r.B.assign(s.B);
      expect(Array.from(r.delta(x(), ctx()).dataSync())).toEqual(Array.from(s.delta(x(), ctx()).dataSync()));
    }
  });

  it("PERFT-R with K' = M and renormalisation is the dense mixture Σ_m q_m Δ_m; PERFT-D is that sum with every q_m = 1", () => {
    const r = new AdaptedModel(tinyModel(), [{ type: 'perft-r', experts: 3, topK: 3, rank: 2, routerStd: 0.5 }], registry()).adapters[0] as PerftR;
    const d = new AdaptedModel(tinyModel(), [{ type: 'perft-d', experts: 3, rank: 2 }], registry()).adapters[0] as PerftBlockAdapter;
    randomiseB(r, 2);
    d.A.assign(r.A);
    d.B.assign(r.B);
    const xs = x();
    const q = r.probs(xs);
    const one = (m: number) =>
      tf.mul(
        tf.matMul(
          tf.matMul(xs, tf.squeeze(tf.slice(r.A, [m, 0, 0], [1, -1, -1])), false, true),
          tf.squeeze(tf.slice(r.B, [m, 0, 0], [1, -1, -1])),
          false,
          true,
        ),
        r.scale,
      );
    const mixture = tf.addN([0, 1, 2].map((m) => tf.mul(one(m), tf.slice(q, [0, m], [-1, 1]))));
    const sum = tf.addN([0, 1, 2].map(one));
    expect(maxDiff(r.delta(xs, ctx()).dataSync(), mixture.dataSync())).toBeLessThan(1e-5);
    expect(maxDiff(d.delta(xs, ctx()).dataSync(), sum.dataSync())).toBeLessThan(1e-5);
  });

  it('PERFT-E with every Δ_e tied to one Δ, on a renormalising base, equals PERFT-S (the gates sum to 1)', () => {
    const sModel = tinyModel();
    const s = new AdaptedModel(sModel, [{ type: 'perft-s', rank: 2 }], registry());
    const eModel = tinyModel();
    const e = new AdaptedModel(eModel, [{ type: 'perft-e', rank: 2 }], registry());
    s.adapters.forEach((a, i) => {
      const sa = a as PerftBlockAdapter;
      const ea = e.adapters[i] as PerftE;
      randomiseB(sa, 10 + i);
      ea.A.assign(tf.tile(sa.A, [4, 1, 1]));
      ea.B.assign(tf.tile(sa.B, [4, 1, 1]));
    });
    expect(maxDiff(logitsOf(eModel), logitsOf(sModel))).toBeLessThan(1e-5);
  });

  it('PERFT-E: the adapters of experts no token chose get zero gradient, the chosen ones do not', () => {
    const model = tinyModel();
    const adapted = new AdaptedModel(model, [{ type: 'perft-e', rank: 2 }], registry());
    const first = adapted.adapters[0] as PerftE;
    randomiseB(first, 3);
    const assignments = new Map();
    const c = forwardContext(new Rng(0), true, { assignments });
    const { grads } = tf.variableGrads(() => tf.sum(model.forward(tf.tensor2d([[3]], [1, 1], 'int32'), c)) as tf.Scalar, [first.A, first.B]);
    const chosen = new Set(Array.from(assignments.get('transformer.layers.0.ffn')[0].expertIndex as Int32Array));
    expect(chosen.size).toBe(2);
    for (const v of [first.A, first.B]) {
      const g = tf.unstack(grads[v.name]!);
      g.forEach((ge, e) => {
        const norm = tf.sum(tf.abs(ge)).dataSync()[0]!;
        if (chosen.has(e)) expect(norm).toBeGreaterThan(0);
        else expect(norm).toBe(0);
      });
    }
  });
});

describe('PERFT-R balance loss', () => {
  it("with uniform router logits it is M · Σ F_m / M = K' exactly, pooled over the layers into one loss", () => {
    const model = tinyModel();
    const adapted = new AdaptedModel(model, [{ type: 'perft-r', experts: 4, topK: 2, rank: 2, routerStd: 0 }], registry());
    const c = forwardContext(new Rng(0), true);
    model.forward(tf.tensor2d([[1, 2, 3, 4, 5]], [1, 5], 'int32'), c);
    const aux = c.aux.filter((a) => a.name === 'perft_balance');
    expect(aux).toHaveLength(1);
    expect(aux[0]!.value.dataSync()[0]).toBeCloseTo(2, 6);
    expect(aux[0]!.coef).toBe(0.01);
    expect(adapted.adapters).toHaveLength(2);
  });

  it('bad input: topK above the number of PEFT experts', () => {
    expect(() => new AdaptedModel(tinyModel(), [{ type: 'perft-r', experts: 2, topK: 3 }], registry())).toThrow(
      'transformer.layers.0.ffn: topK: topK 3 exceeds the number of PEFT experts (2)',
    );
  });
});
