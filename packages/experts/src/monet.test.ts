/**
 * MONET invariants (docs/monet.md#invariants-the-tests-check): the factored HD / VD evaluation equals the explicit sum over all
 * E² composed experts Σ_h Σ_ij g1[h,i] g2[h,j] E_ij(x); a 262,144-expert layer is built (not trained) at
 * its O(√N) parameter count; finite-difference gradients (router, shards, input, aux losses); masking
 * removes composed experts (output = explicit sum without them, fully masked shards get zero gradient).
 */
import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { directionalGradCheck } from '../test/helpers.js';
import { MonetHDExperts, MonetLayer, type MonetOptions, type MonetVDExperts } from './monet.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const base: Omit<MonetOptions, 'decomposition'> = {
  experts: 3,
  expertDim: 4,
  heads: 2,
  k: 2,
  routerGroup: 1,
  activation: 'relu2',
  unifCoef: 1e-3,
  ambCoef: 1e-3,
  initStd: 0.3,
  bnEps: 1e-5,
  bnMomentum: 0.1,
};
const d = 6;
function monet(decomposition: 'horizontal' | 'vertical', seed = 1, o: Partial<MonetOptions> = {}) {
  const m = new MonetLayer(d, { ...base, ...o, decomposition }, true, new Rng(seed));
  m.assignPaths('ffn');
  // non-zero output biases so that the bias terms are tested too
  const moe = m.moe;
  if (moe instanceof MonetHDExperts) moe.b.assign(tf.tensor(new Rng(seed + 100).normalArray(moe.b.size), moe.b.shape));
  else {
    moe.b1.assign(tf.tensor(new Rng(seed + 100).normalArray(moe.b1.size), moe.b1.shape));
    moe.b2.assign(tf.tensor(new Rng(seed + 101).normalArray(moe.b2.size), moe.b2.shape));
  }
  return m;
}
const relu2 = (v: number) => Math.max(0, v) ** 2;

/** Linear layer y = W x + b with W [out, in] row-major. */
function lin(w: ArrayLike<number>, b: ArrayLike<number> | null, x: number[], out: number, inF: number, rowOff = 0, rows = out): number[] {
  return Array.from({ length: rows }, (_, r) => {
    let s = b ? b[rowOff + r]! : 0;
    for (let i = 0; i < inF; i++) s += w[(rowOff + r) * inF + i]! * x[i]!;
    return s;
  });
}

/** E_ij(x) written out from the official state_dict layouts (docs/monet.md). */
function composedExpert(m: MonetLayer, i: number, j: number, x: number[]): number[] {
  const { expertDim: mm, experts: E } = m.options;
  if (m.moe instanceof MonetHDExperts) {
    const { u, v, b } = m.moe;
    const a = lin(u.weight.dataSync(), u.bias!.dataSync(), x, E * mm, d, i * mm, mm).map(relu2);
    const vw = v.weight.dataSync(); // [d, E·m]
    const c = b.dataSync();
    return Array.from({ length: d }, (_, o) => a.reduce((s, av, r) => s + vw[o * E * mm + j * mm + r]! * av, c[j * d + o]!));
  }
  const vd = m.moe as MonetVDExperts;
  const h = mm / 2;
  const half = d / 2;
  const a1 = lin(vd.u1.weight.dataSync(), vd.u1.bias!.dataSync(), x, E * h, d, i * h, h).map(relu2);
  const a2 = lin(vd.u2.weight.dataSync(), vd.u2.bias!.dataSync(), x, E * h, d, j * h, h).map(relu2);
  const block = (w: ArrayLike<number>, owner: number, act: number[]) =>
    Array.from({ length: half }, (_, o) => act.reduce((s, av, r) => s + w[o * E * h + owner * h + r]! * av, 0));
  const b1 = vd.b1.dataSync();
  const b2 = vd.b2.dataSync();
  const top = block(vd.v11.weight.dataSync(), i, a1).map((v, o) => v + block(vd.v12.weight.dataSync(), i, a2)[o]! + b1[i * half + o]!);
  const bot = block(vd.v21.weight.dataSync(), j, a1).map((v, o) => v + block(vd.v22.weight.dataSync(), j, a2)[o]! + b2[j * half + o]!);
  return [...top, ...bot];
}

/**
 * Σ_h Σ_ij g1[h,i] g2[h,j] E_ij(x) (skipping masked ids i·E + j), with the routing of the layer's own router
 * (in training mode it normalises with the batch statistics, which re-routing the same batch reproduces).
 */
function explicitSum(m: MonetLayer, xt: tf.Tensor2D, training: boolean, masked = new Set<number>()): number[][] {
  const r = m.router!.route(xt, training);
  const x = xt.arraySync();
  const g1 = r.group1.g.arraySync();
  const g2 = r.group2.g.arraySync();
  const { experts: E, heads: H } = m.options;
  return x.map((row, t) => {
    const out = new Array<number>(d).fill(0);
    for (let i = 0; i < E; i++)
      for (let j = 0; j < E; j++) {
        if (masked.has(i * E + j)) continue;
        let G = 0;
        for (let h = 0; h < H; h++) G += g1[t]![h]![i]! * g2[t]![h]![j]!;
        if (G === 0) continue;
        composedExpert(m, i, j, row).forEach((v, o) => {
          out[o]! += G * v;
        });
      }
    return out;
  });
}

function expectClose(a: number[][], b: number[][], tol = 1e-4) {
  let worst = 0;
  let scale = 0;
  a.forEach((row, t) => {
    row.forEach((v, o) => {
      worst = Math.max(worst, Math.abs(v - b[t]![o]!));
      scale = Math.max(scale, Math.abs(b[t]![o]!));
    });
  });
  expect(scale).toBeGreaterThan(0);
  expect(worst / scale).toBeLessThan(tol);
}

describe('monet', () => {
  for (const dec of ['horizontal', 'vertical'] as const) {
    it(`${dec}: factored form == explicit sum over the E² composed experts (train and eval)`, () => {
      const m = monet(dec);
      const x = tf.tensor2d(new Rng(2).normalArray(7 * d), [7, d]);
      for (const training of [true, false]) {
        const y = m.forward(x, forwardContext(new Rng(0), training)) as tf.Tensor2D;
        expectClose(y.arraySync(), explicitSum(m, x, training));
      }
      // the routing really is sparse and multi-expert: some (token, head) rows select 1 < count < E
      const sel = m.router!.route(x, false).group1.sel;
      let partial = 0;
      for (let r = 0; r < sel.length / 3; r++) {
        const c = sel[3 * r]! + sel[3 * r + 1]! + sel[3 * r + 2]!;
        if (c >= 1 && c < 3) partial++;
      }
      expect(partial).toBeGreaterThan(0);
    });

    it(`${dec}: masking removes composed experts — output = explicit sum without them; fully masked shards get zero gradient`, () => {
      const m = monet(dec, 3);
      const E = 3;
      const x = tf.tensor2d(new Rng(4).normalArray(9 * d), [9, d]);
      // all experts (1, j) and all experts (i, 2): shard i = 1 of group 1 and shard j = 2 of group 2 vanish
      const masked = new Set<number>();
      for (let j = 0; j < E; j++) masked.add(1 * E + j);
      for (let i = 0; i < E; i++) masked.add(i * E + 2);
      const expertMask = new Map([['ffn', masked]]);
      const y = m.forward(x, forwardContext(new Rng(0), false, { expertMask })) as tf.Tensor2D;
      expectClose(y.arraySync(), explicitSum(m, x, false, masked));
      const unmasked = m.forward(x, forwardContext(new Rng(0), false)) as tf.Tensor2D;
      expect(tf.max(tf.abs(tf.sub(unmasked, y))).dataSync()[0]!).toBeGreaterThan(1e-3);
      // all-ones mask (nothing masked) == plain; mask everything -> 0
      const all = new Set(Array.from({ length: E * E }, (_, e) => e));
      const zero = m.forward(x, forwardContext(new Rng(0), false, { expertMask: new Map([['ffn', all]]) }));
      expect(tf.max(tf.abs(zero)).dataSync()[0]).toBe(0);
      // gradients of the masked shards
      const f = () => tf.sum(tf.square(m.forward(x, forwardContext(new Rng(0), false, { expertMask })))) as tf.Scalar;
      const { grads } = tf.variableGrads(f, m.moe.trainableVariables());
      const rowsOf = (name: string) => m.moe.namedParameters().find(([n]) => n === name)![1];
      const grad = (name: string) => grads[rowsOf(name).name]!;
      const mm = dec === 'horizontal' ? 4 : 2;
      const block = (g: tf.Tensor, axis: 0 | 1, owner: number, width: number) =>
        tf.max(tf.abs(axis === 0 ? tf.slice(g, [owner * width, 0], [width, -1]) : tf.slice(g, [0, owner * width], [-1, width]))).dataSync()[0]!;
      if (dec === 'horizontal') {
        expect(block(grad('u.weight'), 0, 1, mm)).toBe(0);
        expect(block(tf.reshape(grad('u.bias'), [-1, 1]), 0, 1, mm)).toBe(0);
        expect(block(grad('v.weight'), 1, 2, mm)).toBe(0);
        expect(block(grad('b'), 0, 2, 1)).toBe(0);
        expect(block(grad('u.weight'), 0, 0, mm)).toBeGreaterThan(0);
        expect(block(grad('v.weight'), 1, 0, mm)).toBeGreaterThan(0);
      } else {
        // group-1 shard i = 1 owns u1 rows, v11 / v12 columns and b1 row; group-2 shard j = 2 owns u2, v21 / v22, b2
        expect(block(grad('u1.weight'), 0, 1, mm)).toBe(0);
        expect(block(grad('v11.weight'), 1, 1, mm)).toBe(0);
        expect(block(grad('v12.weight'), 1, 1, mm)).toBe(0);
        expect(block(grad('b1'), 0, 1, 1)).toBe(0);
        expect(block(grad('u2.weight'), 0, 2, mm)).toBe(0);
        expect(block(grad('v21.weight'), 1, 2, mm)).toBe(0);
        expect(block(grad('v22.weight'), 1, 2, mm)).toBe(0);
        expect(block(grad('b2'), 0, 2, 1)).toBe(0);
        expect(block(grad('u1.weight'), 0, 0, mm)).toBeGreaterThan(0);
        expect(block(grad('v22.weight'), 1, 0, mm)).toBeGreaterThan(0);
      }
      expect(() => m.forward(x, forwardContext(new Rng(0), false, { expertMask: new Map([['ffn', new Set([9])]]) }))).toThrow(
        /expert mask id 9 is out of range \[0, 9\)/,
      );
    });

    it(`${dec}: finite-difference gradients of output + aux losses (router, shards, input; routing decisions fixed)`, () => {
      const m = monet(dec, 5);
      const x = tf.variable(tf.tensor2d(new Rng(6).normalArray(5 * d), [5, d]));
      const R = tf.tensor2d(new Rng(7).normalArray(5 * d), [5, d]);
      // eval mode: the BN statistics are the buffers, so a small step cannot move the threshold
      const f = () => {
        const ctx = forwardContext(new Rng(0), false);
        let loss = tf.sum(tf.mul(m.forward(x, ctx), R));
        for (const a of ctx.aux) loss = tf.add(loss, tf.mul(a.value, 10));
        return loss as tf.Scalar;
      };
      const vars = [x, ...m.trainableVariables()];
      const errs = directionalGradCheck(f, vars, new Rng(8), 1e-3);
      expect(errs.length).toBe(vars.length);
      for (const e of errs) expect(e).toBeLessThan(3e-2);
    });
  }

  it('a 262,144-expert layer (E = 512) costs 2·E·m·d + E·m + E·d + 2·H·E·d parameters: O(√N), built without training', () => {
    const [dd, E, mm, H] = [16, 512, 8, 4];
    const before = tf.memory().numBytes;
    const m = new MonetLayer(dd, { ...base, experts: E, expertDim: mm, heads: H, k: 8, decomposition: 'vertical' }, true, new Rng(1));
    expect(m.numExperts).toBe(262_144);
    const count = m.parameterCount();
    const formula = 2 * E * mm * dd + E * mm + E * dd + 2 * H * E * dd;
    expect(count).toBe(formula);
    expect(count).toBe(MonetLayer.parameterCount(dd, E, mm, H, true));
    expect(count).toBe(208_896);
    // memory: parameters plus the router's BN buffers, nothing per composed expert
    expect(tf.memory().numBytes - before).toBe(4 * (count + 4 * H));
    // √N scaling: 4x the experts (E 256 -> 512) only doubles the expert parameters; PEER would store 2·N·d
    expect(MonetLayer.parameterCount(dd, 512, mm, H, false)).toBe(2 * MonetLayer.parameterCount(dd, 256, mm, H, false));
    expect(2 * 262_144 * dd).toBeGreaterThan(40 * count);
    // and it runs: a forward pass on a few tokens without any [n, E, E] tensor
    const x = tf.tensor2d(new Rng(2).normalArray(3 * dd), [3, dd]);
    const y = m.forward(x, forwardContext(new Rng(0), false));
    expect(y.shape).toEqual([3, dd]);
    expect(Number.isFinite(tf.sum(y).dataSync()[0]!)).toBe(true);
    const hd = new MonetLayer(dd, { ...base, experts: E, expertDim: mm, heads: H, k: 8, decomposition: 'horizontal' }, true, new Rng(1));
    expect(hd.parameterCount()).toBe(formula);
    m.dispose();
    hd.dispose();
  });
});
