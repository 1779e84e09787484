/**
 * PEER invariants (docs/peer-fff.md#invariants-the-tests-check): product-key search == brute-force top-k over all N keys
 * (with and without masked experts); k = 1 is a dense MLP of retrieved neurons; per-head gates sum to 1;
 * eval mode is batch-independent; finite-difference gradients; unselected and masked experts get exactly
 * zero gradient and masked experts are never retrieved.
 */
import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { directionalGradCheck } from '../test/helpers.js';
import { PEERLayer, type PEEROptions, productKeyTopK } from './peer.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const d = 8;
function peer(o: Partial<PEEROptions> = {}, seed = 1) {
  const p = new PEERLayer(
    d,
    { experts: 36, heads: 2, k: 3, keyDim: 4, activation: 'relu', queryBatchNorm: true, bnEps: 1e-5, bnMomentum: 0.1, ...o },
    new Rng(seed),
  );
  p.assignPaths('ffn');
  return p;
}

/** Brute force: all N = S² scores s1[i] + s2[j], sorted descending (ties by id), first k unmasked ids. */
function bruteTopK(s1: ArrayLike<number>, s2: ArrayLike<number>, row: number, S: number, k: number, masked = new Set<number>()): number[] {
  const all: [number, number][] = [];
  for (let i = 0; i < S; i++) for (let j = 0; j < S; j++) if (!masked.has(i * S + j)) all.push([Math.fround(s1[row * S + i]! + s2[row * S + j]!), i * S + j]);
  all.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  return all.slice(0, k).map(([, e]) => e);
}

describe('peer', () => {
  it('product-key top-k == brute-force top-k over all N keys (random scores, many rows, with and without masks)', () => {
    const rng = new Rng(3);
    for (const [S, k, rows] of [
      [8, 1, 50],
      [8, 4, 50],
      [16, 8, 40],
      [5, 5, 30],
    ] as const) {
      const s1 = rng.normalArray(rows * S);
      const s2 = rng.normalArray(rows * S);
      const masks = [undefined, new Set(Array.from({ length: 3 * S }, () => rng.int(S * S)))];
      for (const masked of masks) {
        if (masked && S * S - masked.size < k) continue;
        const { ids, i1, i2 } = productKeyTopK(s1, s2, rows, S, k, masked);
        for (let r = 0; r < rows; r++) {
          const got = Array.from(ids.subarray(r * k, (r + 1) * k));
          expect(got).toEqual(bruteTopK(s1, s2, r, S, k, masked));
          for (let c = 0; c < k; c++) expect(i1[r * k + c]! * S + i2[r * k + c]!).toBe(got[c]);
        }
      }
    }
    expect(() => productKeyTopK(new Float32Array(4), new Float32Array(4), 1, 4, 5)).toThrow(/k <= √N/);
  });

  it('the layer retrieves the brute-force top-k of its own query scores; gates are a softmax per head', () => {
    const p = peer();
    const x = tf.tensor2d(new Rng(2).normalArray(10 * d), [10, d]);
    const r = p.retrieve(x, false);
    const q = r.q.arraySync();
    const keys = p.subKeys.arraySync() as number[][][];
    for (let t = 0; t < 10; t++)
      for (let h = 0; h < 2; h++) {
        const qh = q[t]!.slice(h * 4, h * 4 + 4);
        const s1 = keys[0]!.map((key) => qh[0]! * key[0]! + qh[1]! * key[1]!);
        const s2 = keys[1]!.map((key) => qh[2]! * key[0]! + qh[3]! * key[1]!);
        const got = Array.from(r.indices.subarray((t * 2 + h) * 3, (t * 2 + h + 1) * 3));
        // compare as sets (float rounding may reorder near-ties)
        expect(new Set(got)).toEqual(new Set(bruteTopK(s1, s2, 0, 6, 3)));
      }
    for (const s of tf.sum(r.gates, 2).dataSync()) expect(s).toBeCloseTo(1, 6);
  });

  it('k = 1: output == Σ_r σ(u_e·x) v_e over the heads (a dense MLP of retrieved neurons), gates == 1', () => {
    const p = peer({ k: 1, heads: 3, activation: 'gelu' });
    const x = tf.tensor2d(new Rng(4).normalArray(5 * d), [5, d]);
    const y = p.forward(x, forwardContext(new Rng(0), false)).arraySync() as number[][];
    const r = p.retrieve(x, false);
    for (const g of r.gates.dataSync()) expect(g).toBe(1);
    const U = p.down.weight.arraySync() as number[][];
    const V = p.up.weight.arraySync() as number[][];
    const gelu = (v: number) => tf.tidy(() => tf.mul(tf.mul(v, 0.5), tf.add(1, tf.erf(v / Math.SQRT2))).dataSync()[0]!);
    x.arraySync().forEach((row, t) => {
      const want = new Array<number>(d).fill(0);
      for (let h = 0; h < 3; h++) {
        const e = r.indices[t * 3 + h]!;
        const a = gelu(row.reduce((s, v, i) => s + v * U[e]![i]!, 0));
        V[e]!.forEach((v, o) => {
          want[o]! += a * v;
        });
      }
      y[t]!.forEach((v, o) => {
        expect(v).toBeCloseTo(want[o]!, 5);
      });
    });
  });

  it('eval mode is batch-independent; train mode is not (query BatchNorm statistics)', () => {
    const p = peer();
    const x = tf.tensor2d(new Rng(5).normalArray(8 * d), [8, d]);
    const full = p.forward(x, forwardContext(new Rng(0), false)).arraySync() as number[][];
    const part = p.forward(tf.slice(x, [0, 0], [3, d]), forwardContext(new Rng(0), false)).arraySync() as number[][];
    part.forEach((row, t) => {
      row.forEach((v, o) => {
        expect(v).toBeCloseTo(full[t]![o]!, 6);
      });
    });
    const q = peer();
    const fullT = q.forward(x, forwardContext(new Rng(0), true)).arraySync() as number[][];
    const partT = q.forward(tf.slice(x, [0, 0], [3, d]), forwardContext(new Rng(0), true)).arraySync() as number[][];
    const diff = Math.max(...partT.flatMap((row, t) => row.map((v, o) => Math.abs(v - fullT[t]![o]!))));
    expect(diff).toBeGreaterThan(1e-4);
  });

  for (const training of [false, true]) {
    it(`finite-difference gradients (${training ? 'train: through the BN batch statistics' : 'eval'}): query network, BN, sub-keys, experts, input`, () => {
      const p = peer({ activation: 'gelu' }, 6);
      const x = tf.variable(tf.tensor2d(new Rng(7).normalArray(6 * d), [6, d]));
      const R = tf.tensor2d(new Rng(8).normalArray(6 * d), [6, d]);
      const f = () => tf.sum(tf.mul(p.forward(x, forwardContext(new Rng(0), training)), R)) as tf.Scalar;
      const vars = [x, ...p.trainableVariables()];
      // train mode couples every token through the BN statistics, so a step moves every query: a smaller
      // step keeps the retrieved sets fixed (at 1e-3 some top-k near-tie flips and the difference jumps)
      const errs = directionalGradCheck(f, vars, new Rng(9), training ? 1e-4 : 1e-3);
      expect(errs.length).toBe(7);
      for (const e of errs) expect(e).toBeLessThan(3e-2);
    });
  }

  it('unselected experts get exactly zero gradient; masked experts are never retrieved, contribute nothing and get zero gradient', () => {
    const p = peer({}, 10);
    const x = tf.tensor2d(new Rng(11).normalArray(6 * d), [6, d]);
    // which experts does the unmasked layer pick? mask three of them
    const chosen = [...new Set(p.retrieve(x, false).indices)];
    const masked = new Set(chosen.slice(0, 3));
    const expertMask = new Map([['ffn', masked]]);
    const run = (mask: boolean) => () => tf.sum(tf.square(p.forward(x, forwardContext(new Rng(0), false, mask ? { expertMask } : {})))) as tf.Scalar;
    const { grads } = tf.variableGrads(run(true), [p.down.weight, p.up.weight]);
    const underMask = p.retrieve(x, false, masked);
    const ids = underMask.indices;
    for (const e of masked) expect(ids.includes(e)).toBe(false);
    // retrieval under the mask == brute force over the unmasked experts
    const q = underMask.q.arraySync();
    const keys = p.subKeys.arraySync() as number[][][];
    for (let t = 0; t < 6; t++)
      for (let h = 0; h < 2; h++) {
        const qh = q[t]!.slice(h * 4, h * 4 + 4);
        const s1 = keys[0]!.map((key) => qh[0]! * key[0]! + qh[1]! * key[1]!);
        const s2 = keys[1]!.map((key) => qh[2]! * key[0]! + qh[3]! * key[1]!);
        expect(new Set(ids.subarray((t * 2 + h) * 3, (t * 2 + h + 1) * 3))).toEqual(new Set(bruteTopK(s1, s2, 0, 6, 3, masked)));
      }
    const used = new Set(ids);
    for (const v of [p.down.weight, p.up.weight]) {
      const g = grads[v.name]!.arraySync() as number[][];
      g.forEach((row, e) => {
        const zero = row.every((val) => val === 0);
        if (!used.has(e)) expect(zero).toBe(true);
      });
      expect(g.some((row, e) => used.has(e) && row.some((val) => val !== 0))).toBe(true);
    }
    // the masked experts' rows do not matter to the output any more
    const before = p.forward(x, forwardContext(new Rng(0), false, { expertMask })).dataSync();
    const saved = p.up.weight.clone();
    p.up.weight.assign(
      tf.add(
        p.up.weight,
        tf
          .oneHot(tf.tensor1d([...masked], 'int32'), 36)
          .transpose()
          .matMul(tf.ones([3, d]))
          .mul(100),
      ),
    );
    const after = p.forward(x, forwardContext(new Rng(0), false, { expertMask })).dataSync();
    expect(Array.from(after)).toEqual(Array.from(before));
    p.up.weight.assign(saved);
    expect(() => p.forward(x, forwardContext(new Rng(0), false, { expertMask: new Map([['ffn', new Set([36])]]) }))).toThrow(
      /expert mask id 36 is out of range \[0, 36\)/,
    );
  });

  it('parameter count follows 2·N·d + h·dk·d + √N·dk + 2·h·dk', () => {
    const p = peer();
    expect(p.parameterCount()).toBe(2 * 36 * d + 2 * 4 * d + 6 * 4 + 2 * 2 * 4);
    expect(p.parameterCount()).toBe(PEERLayer.parameterCount(d, 36, 2, 4));
  });
});
