/**
 * The S'MoRE layer (arXiv 2504.06426): the vectorised tree equals a per-token recursion written out in
 * plain JS (float64) with experts repeated under several parents; node counts F_l = Π_{l'≥l} f_{l'};
 * exact parameter counts; W_proj = 0 gives Δ = 0 exactly; one pool with block-identity B and σ = identity
 * is a flat mixture of LoRA experts; gate weights and the balance-loss identities. The official layer's
 * own numbers are checked by the `smore_layer` golden fixtures (packages/verify).
 */
import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { SMoRE, type SMoREOptions, smoreHiddenSizes, smoreParameterCount } from './smore-layer.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const base: SMoREOptions = {
  dIn: 6,
  dOut: 5,
  ranks: [2, 3, 2],
  experts: [3, 3, 2],
  fanout: [2, 2, 2],
  gateDims: [4, 3, 5],
  dDown: 4,
  gate: 'switch',
  activation: 'tanh',
  activationPosition: 'all',
  scaling: [1, 0.5, 2],
  balanceWeight: 0.01,
  init: 'normal',
};

type Params = Map<string, { data: number[]; shape: number[] }>;
const paramsOf = (m: SMoRE): Params => new Map(m.namedParameters().map(([n, v]) => [n, { data: Array.from(v.dataSync()), shape: v.shape.slice() }]));

/** y = W x + b with W [out, in] row-major. */
function affine(W: { data: number[]; shape: number[] }, x: number[], b?: { data: number[] }, offset = 0): number[] {
  const [out, inn] = W.shape.slice(-2) as [number, number];
  const y = new Array<number>(out).fill(0);
  for (let i = 0; i < out; i++) {
    let s = b ? b.data[i]! : 0;
    for (let j = 0; j < inn; j++) s += W.data[offset + i * inn + j]! * x[j]!;
    y[i] = s;
  }
  return y;
}

/** Δ(x) of one token by the recursion of the paper, nodes expanded one by one. */
function recursiveDelta(o: SMoREOptions, P: Params, x: number[]): { delta: number[]; nodes: number[] } {
  const g = (n: string) => P.get(n)!;
  const act = (v: number[]) => v.map((z) => (o.activation === 'tanh' ? Math.tanh(z) : z));
  const d = smoreHiddenSizes(o.ranks, o.experts);
  const L = o.ranks.length;
  const nodes = new Array<number>(L).fill(0);
  const xd = affine(g('moe_downproj_x.default.weight'), x, g('moe_downproj_x.default.bias'));
  const children = (l: number, path: number[][]): { e: number; alpha: number }[] => {
    const input = [xd, ...path].flat();
    const h = affine(g(`moe_gate.default.${l}.mlp.0.weight`), input, g(`moe_gate.default.${l}.mlp.0.bias`)).map((z) => Math.max(0, z));
    const q = affine(g(`moe_gate.default.${l}.mlp.2.weight`), h, g(`moe_gate.default.${l}.mlp.2.bias`));
    const logits = affine(g(`moe_gate.default.${l}.keys`), q);
    const m = Math.max(...logits);
    const ex = logits.map((z) => Math.exp(z - m));
    const z = ex.reduce((a, b) => a + b, 0);
    const pi = ex.map((v) => v / z);
    if (o.gate === 'dense') return pi.map((alpha, e) => ({ e, alpha }));
    const top = pi
      .map((p, e) => ({ e, p }))
      .sort((a, b) => b.p - a.p)
      .slice(0, o.fanout[l]);
    const sum = top.reduce((a, c) => a + c.p, 0);
    return top.map((c) => ({ e: c.e, alpha: o.fanout[l]! > 1 ? c.p / sum : c.p }));
  };
  const key = (l: number, e: number) => g(`moe_gate.default.${l}.keys`).data.slice(e * o.gateDims[l]!, (e + 1) * o.gateDims[l]!);
  const state = (l: number, e: number, path: number[][]): number[] => {
    nodes[l]!++;
    const r = o.ranks[l]!;
    const A = g(`moe_A.default.${l}`);
    const ab = g(`moe_A_bias.default.${l}`).data.slice(e * r, (e + 1) * r);
    const ax = affine(A, x, { data: ab }, e * r * o.dIn);
    const bb = g(`moe_B_bias.default.${l}`).data.slice(e * d[l + 1]!, (e + 1) * d[l + 1]!);
    const u = affine(g(`moe_B.default.${l}`), ax, { data: bb }, e * d[l + 1]! * r).map((v) => v * o.scaling[l]!);
    if (l === 0) return o.activationPosition === 'all' ? act(u) : u;
    const agg = new Array<number>(d[l]!).fill(0);
    for (const c of children(l - 1, [...path, key(l, e)]))
      state(l - 1, c.e, [...path, key(l, e)]).forEach((v, i) => {
        agg[i]! += c.alpha * v;
      });
    if (o.activationPosition === 'all') return act(affine(g(`moe_W.default.${l}`), agg, g(`moe_W_bias.default.${l}`)).map((v, i) => v + u[i]!));
    return affine(g(`moe_W.default.${l}`), act(agg), g(`moe_W_bias.default.${l}`)).map((v, i) => v + u[i]!);
  };
  const xL = new Array<number>(d[L]!).fill(0);
  for (const c of children(L - 1, []))
    state(L - 1, c.e, []).forEach((v, i) => {
      xL[i]! += c.alpha * v;
    });
  return { delta: affine(g('moe_W_final.default'), xL, g('moe_W_final_bias.default')), nodes };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe("S'MoRE layer", () => {
  it.each([
    ['switch, σ on every node', base],
    ["switch, S'MoRE* (child_v2)", { ...base, activationPosition: 'child_v2' as const }],
    ['dense gate', { ...base, gate: 'dense' as const, fanout: [3, 3, 2] }],
    ['top pool f = 1', { ...base, fanout: [2, 2, 1] }],
  ])('%s: the vectorised tree equals the per-token recursion', (_, o) => {
    const layer = new SMoRE(o, new Rng(3));
    const N = 7;
    const xs = new Rng(4).normalArray(N * o.dIn);
    const got = tf.tidy(() => layer.compute(tf.tensor2d(xs, [N, o.dIn])).delta.dataSync());
    const P = paramsOf(layer);
    const tree = layer.route(tf.tensor2d(xs, [N, o.dIn]));
    let scale = 0;
    for (let t = 0; t < N; t++) {
      const ref = recursiveDelta(o, P, Array.from(xs.subarray(t * o.dIn, (t + 1) * o.dIn)));
      for (let l = 0; l < o.ranks.length; l++) expect(ref.nodes[l]).toBe(o.fanout.slice(l).reduce((a, b) => a * b, 1));
      const row = got.subarray(t * o.dOut, (t + 1) * o.dOut);
      scale = Math.max(scale, ...ref.delta.map(Math.abs));
      expect(maxAbsDiff(row, ref.delta)).toBeLessThan(1e-5 * Math.max(1, scale));
    }
    // F_l = N Π_{l' ≥ l} f_{l'} nodes per pool; with s_l < F_l / N some expert sits under several parents.
    for (let l = 0; l < o.ranks.length; l++) expect(tree.pools[l]!.expert.length).toBe(N * o.fanout.slice(l).reduce((a, b) => a * b, 1));
    const perToken = tree.pools[0]!.expert.length / N;
    expect(perToken).toBeGreaterThan(o.experts[0]!);
    layer.dispose();
  });

  it('sizes and parameter counts follow d_{l+1} = d_l + s_l r_l and the exact formula', () => {
    expect(smoreHiddenSizes([4, 8], [4, 4])).toEqual([0, 16, 48]);
    expect(smoreHiddenSizes([2, 4, 4], [4, 3, 4])).toEqual([0, 8, 20, 36]);
    const cases: [Partial<SMoREOptions>, number, number][] = [
      [{ ranks: [4, 8], experts: [4, 4], gateDims: [8, 8], fanout: [2, 2], scaling: [1, 1] }, 6008, 972],
      [{ ranks: [2, 4, 4], experts: [4, 3, 4], gateDims: [6, 5, 7], fanout: [2, 2, 2], scaling: [1, 1, 1] }, 4416, 1028],
      [{ ranks: [8], experts: [8], gateDims: [8], fanout: [2], scaling: [1] }, 8792, 732],
    ];
    for (const [part, experts, router] of cases) {
      const o = { ...base, dIn: 40, dOut: 24, dDown: 12, ...part };
      expect(smoreParameterCount(o)).toEqual({ experts, router, total: experts + router });
      const layer = new SMoRE(o, new Rng(0));
      expect(layer.parameterCount()).toBe(experts + router);
      layer.dispose();
    }
  });

  it('W_proj = 0 (the default init) gives Δ = 0 exactly, whatever the other weights', () => {
    const layer = new SMoRE({ ...base, init: 'w_final_zero' }, new Rng(5));
    for (const [name, v] of layer.namedParameters()) if (!name.startsWith('moe_W_final')) v.assign(tf.randomNormal(v.shape, 0, 1, 'float32', 7));
    const x = tf.randomNormal([2, 3, base.dIn], 0, 1, 'float32', 8);
    const y = tf.randomNormal([2, 3, base.dOut], 0, 1, 'float32', 9);
    const delta = layer.forward(x, forwardContext(new Rng(0), true));
    expect(Array.from(delta.dataSync()).every((v) => v === 0)).toBe(true);
    expect(tf.add(y, delta).dataSync()).toEqual(y.dataSync());
    tf.dispose([x, y, delta]);
    layer.dispose();
  });

  it('one pool, σ = identity, block-identity B: a flat mixture of LoRA experts Σ α_i B̄_i (A_i x)', () => {
    const o: SMoREOptions = { ...base, ranks: [3], experts: [4], fanout: [2], gateDims: [5], scaling: [1], activation: 'identity', init: 'eq_1_layer' };
    const layer = new SMoRE(o, new Rng(11));
    const Wf = layer.namedParameters().find(([n]) => n === 'moe_W_final.default')![1];
    Wf.assign(tf.randomNormal(Wf.shape, 0, 1, 'float32', 12)); // the concatenated LoRA B's [d_out, s r]
    const N = 5;
    const xs = new Rng(13).normalArray(N * o.dIn);
    const x = tf.tensor2d(xs, [N, o.dIn]);
    const got = tf.tidy(() => layer.compute(x).delta.dataSync());
    const tree = layer.route(x);
    const P = paramsOf(layer);
    const A = P.get('moe_A.default.0')!;
    const B = P.get('moe_W_final.default')!;
    const r = 3;
    for (let t = 0; t < N; t++) {
      const want = new Array<number>(o.dOut).fill(0);
      for (let j = 0; j < 2; j++) {
        const e = tree.pools[0]!.expert[t * 2 + j]!;
        const alpha = tree.pools[0]!.alpha[t * 2 + j]!;
        const ax = affine(A, Array.from(xs.subarray(t * o.dIn, (t + 1) * o.dIn)), undefined, e * r * o.dIn);
        for (let i = 0; i < o.dOut; i++) for (let k = 0; k < r; k++) want[i]! += alpha * B.data[i * 4 * r + e * r + k]! * ax[k]!;
      }
      expect(maxAbsDiff(got.subarray(t * o.dOut, (t + 1) * o.dOut), want)).toBeLessThan(1e-5);
    }
    x.dispose();
    layer.dispose();
  });

  it('gate weights: dense α sums to 1 per decision; switch renormalises for f > 1 and keeps the raw top score for f = 1', () => {
    const x = tf.randomNormal([6, base.dIn], 0, 1, 'float32', 21);
    const dense = new SMoRE({ ...base, gate: 'dense', fanout: [3, 3, 2] }, new Rng(1));
    const dt = dense.route(x);
    dt.pools.forEach((pool, l) => {
      const f = [3, 3, 2][l]!;
      for (let p = 0; p < pool.alpha.length / f; p++) {
        const s = pool.alpha.subarray(p * f, (p + 1) * f).reduce((a, b) => a + b, 0);
        expect(Math.abs(s - 1)).toBeLessThan(1e-6);
      }
    });
    const sw = new SMoRE({ ...base, fanout: [2, 2, 1] }, new Rng(2));
    const st = sw.route(x);
    const top = st.pools[2]!;
    for (let p = 0; p < 6; p++) {
      const probs = top.probs.subarray(p * 2, (p + 1) * 2);
      expect(top.alpha[p]).toBeCloseTo(Math.max(...probs), 6);
      expect(top.alpha[p]).toBeLessThan(1);
    }
    const mid = st.pools[1]!;
    for (let p = 0; p < mid.alpha.length / 2; p++) expect(mid.alpha[2 * p]! + mid.alpha[2 * p + 1]!).toBeCloseTo(1, 6);
    tf.dispose(x);
    dense.dispose();
    sw.dispose();
  });

  it('balance loss: the per-pool sum of s_l Σ_i f_i P_i; uniform gate scores give Σ_l f_l (γ · f_l per pool); a dense gate has none', () => {
    const layer = new SMoRE(base, new Rng(31));
    const x = tf.randomNormal([9, base.dIn], 0, 1, 'float32', 32);
    const tree = layer.route(x);
    let want = 0;
    tree.pools.forEach((pool, l) => {
      const s = base.experts[l]!;
      const decisions = pool.probs.length / s;
      const f = new Array<number>(s).fill(0);
      for (const e of pool.expert) f[e]! += 1 / decisions;
      for (let i = 0; i < s; i++) {
        let P = 0;
        for (let p = 0; p < decisions; p++) P += pool.probs[p * s + i]! / decisions;
        want += s * f[i]! * P;
      }
    });
    const ctx = forwardContext(new Rng(0), true);
    tf.dispose(layer.forward(x, ctx));
    expect(ctx.aux).toHaveLength(1);
    expect(ctx.aux[0]!.name).toBe('smore_balance');
    expect(ctx.aux[0]!.coef).toBe(0.01);
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeCloseTo(want, 5);
    // Zero keys: every gate score is 1/s_l, so each pool contributes Σ_i f_i = f_l.
    for (const [name, v] of layer.namedParameters()) if (name.endsWith('.keys')) v.assign(tf.zerosLike(v));
    const uniform = layer.compute(x).balance!;
    expect(uniform.dataSync()[0]).toBeCloseTo(
      base.fanout.reduce((a, b) => a + b, 0),
      5,
    );
    const evalCtx = forwardContext(new Rng(0), false);
    tf.dispose(layer.forward(x, evalCtx));
    expect(evalCtx.aux).toHaveLength(0);
    const dense = new SMoRE({ ...base, gate: 'dense', fanout: [3, 3, 2] }, new Rng(1));
    expect(dense.compute(x).balance).toBeNull();
    tf.dispose([x, uniform, ctx.aux[0]!.value]);
    layer.dispose();
    dense.dispose();
  });

  it('refuses inconsistent pool lists with the path of the bad entry', () => {
    expect(() => new SMoRE({ ...base, fanout: [2, 2] }, new Rng(0))).toThrow('$.fanout: fanout has 2 entries but ranks has 3');
    expect(() => new SMoRE({ ...base, fanout: [2, 4, 2] }, new Rng(0))).toThrow('$.fanout[1]: fan-out 4 exceeds the 3 experts of pool 1');
    expect(() => new SMoRE({ ...base, gate: 'dense' }, new Rng(0))).toThrow('$.fanout[0]: a dense gate picks every expert');
  });
});
