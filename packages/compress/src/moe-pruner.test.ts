/**
 * MoE-Pruner's invariants on a tiny two-layer LM (d 16, 4 SwiGLU experts of 12 hidden units): exactly
 * ⌊sparsity · din⌋ zeros per output neuron; with every gate equal to 1 (hash routing) the mask
 * is Wanda's, computed here directly from the expert's own routed inputs; scaling the inputs never
 * changes the mask; the one-line errors.
 */
import { activate, forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { TINY_MOE, tinyMoeLm } from '../test/models.js';
import { testRegistry } from '../test/registry.js';
import { moePrune, wandaMask } from './moe-pruner.js';
import { RoutingObserver } from './observer.js';
import { type Model, moeLayers, type SpecModel } from './surgery.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const { E, D, H } = TINY_MOE;
/** k = 0: hash routing (one expert per token, gate 1). */
const source = (k: number, expert?: Record<string, unknown>): SpecModel => tinyMoeLm(registry, k, expert);

const ids = tf.tensor2d(
  Int32Array.from({ length: 4 * 8 }, (_, i) => (i * 7 + 3) % 32),
  [4, 8],
  'int32',
);

function observe(model: Model, hidden = true): RoutingObserver {
  const obs = new RoutingObserver({ hidden });
  obs.observe(model, ids);
  return obs;
}

/** Zeros per output column of every expert matrix of a [E, din, dout] tensor. */
function zerosPerColumn(v: tf.Tensor): number[] {
  const [n, din, dout] = v.shape as [number, number, number];
  const a = v.dataSync();
  const out: number[] = [];
  for (let e = 0; e < n; e++)
    for (let j = 0; j < dout; j++) {
      let z = 0;
      for (let i = 0; i < din; i++) if (a[(e * din + i) * dout + j] === 0) z++;
      out.push(z);
    }
  return out;
}

describe('wandaMask', () => {
  it('drops exactly ⌊sparsity · din⌋ weights per output neuron, the smallest |W| · ‖x‖; scaling x changes nothing', () => {
    const din = 10;
    const dout = 5;
    const rng = new Rng(3);
    const w = Float32Array.from({ length: din * dout }, () => rng.normal());
    const inSq = Float64Array.from({ length: din }, () => 0.1 + rng.next());
    for (const sparsity of [0.25, 0.5, 0.75]) {
      const mask = wandaMask(w, din, dout, inSq, sparsity);
      for (let j = 0; j < dout; j++) {
        const dropped = Array.from({ length: din }, (_, i) => i).filter((i) => !mask[i * dout + j]);
        expect(dropped).toHaveLength(Math.floor(sparsity * din));
        const score = (i: number) => Math.abs(w[i * dout + j]!) * Math.sqrt(inSq[i]!);
        const kept = Array.from({ length: din }, (_, i) => i).filter((i) => mask[i * dout + j]);
        expect(Math.max(...dropped.map(score))).toBeLessThanOrEqual(Math.min(...kept.map(score)));
      }
      // x → c·x multiplies every squared norm by c².
      expect(
        wandaMask(
          w,
          din,
          dout,
          inSq.map((v) => v * 37.5 ** 2),
          sparsity,
        ),
      ).toEqual(mask);
    }
    // The input norm matters, not only |W|: a silent channel goes first.
    const silent = inSq.slice();
    silent[0] = 0;
    const m = wandaMask(w, din, dout, silent, 0.1);
    for (let j = 0; j < dout; j++) expect(m[j]).toBe(0);
  });

  it('rejects a sparsity outside (0, 1) and mismatched sizes in one line', () => {
    expect(() => wandaMask([1, 2], 2, 1, [1, 1], 1)).toThrow(/the sparsity \(fraction of each neuron's weights to zero\) must be in \(0, 1\), got 1/);
    expect(() => wandaMask([1, 2], 2, 1, [1], 0.5)).toThrow(/the input statistic has 1 channels, the matrix 2 inputs/);
  });
});

describe('moePrune', () => {
  it("with all gates = 1 (hash routing) the mask is Wanda's on each expert's routed inputs; every neuron keeps exactly 1 − sparsity", () => {
    const src = source(0);
    const path = 'transformer.layers.1.ffn';
    // The layer's input and routing, captured directly.
    let x: number[][] = [];
    let plan: { t: number; e: number }[] = [];
    tf.tidy(() => {
      src.model.forward(
        ids,
        forwardContext(new Rng(0), false, {
          moeObserver: (ev) => {
            if (ev.layer !== path) return;
            x = ev.x.arraySync();
            plan = Array.from(ev.plan.tokenIndex.subarray(0, ev.plan.size), (t, n) => ({ t, e: ev.plan.expertIndex[n]! }));
          },
        }),
      );
    });
    const bank = moeLayers(src.model)[1]!.layer.experts as unknown as { w1: tf.Variable; w2: tf.Variable; w3: tf.Variable };
    const before = { w1: bank.w1.dataSync().slice(), w2: bank.w2.dataSync().slice(), w3: bank.w3.dataSync().slice() };
    const inSq = new Float64Array(E * D);
    const hidSq = new Float64Array(E * H);
    tf.tidy(() => {
      for (const { t, e } of plan) {
        const xt = tf.tensor2d([x[t]!]);
        const pick = (w: tf.Variable) => tf.squeeze(tf.gather(w, [e]), [0]) as tf.Tensor2D;
        const u = tf.mul(activate(tf.matMul(xt, pick(bank.w1)), 'silu'), tf.matMul(xt, pick(bank.w3))).dataSync();
        for (let i = 0; i < D; i++) inSq[e * D + i]! += x[t]![i]! ** 2;
        for (let i = 0; i < H; i++) hidSq[e * H + i]! += u[i]! ** 2;
      }
    });
    const sparsity = 0.5;
    const report = moePrune(observe(src.model), src, { sparsity, layers: [path] });
    expect(report.tensors.map((t) => t.tensor)).toEqual(['w1', 'w3', 'w2']);
    const expectMask = (name: 'w1' | 'w2' | 'w3', din: number, dout: number, stat: Float64Array) => {
      const now = bank[name].dataSync();
      for (let e = 0; e < E; e++) {
        const off = e * din * dout;
        const want = wandaMask(before[name].subarray(off, off + din * dout), din, dout, stat.subarray(e * din, (e + 1) * din), sparsity);
        for (let k = 0; k < din * dout; k++) expect(now[off + k], `${name} expert ${e} element ${k}`).toBe(want[k] ? before[name][off + k] : 0);
      }
    };
    expectMask('w1', D, H, inSq);
    expectMask('w3', D, H, inSq);
    expectMask('w2', H, D, hidSq);
    expect(zerosPerColumn(bank.w1).every((z) => z === D / 2)).toBe(true);
    expect(zerosPerColumn(bank.w2).every((z) => z === H / 2)).toBe(true);
    expect(report.tensors.find((t) => t.tensor === 'w2')).toEqual({ layer: path, tensor: 'w2', zeroed: (E * H * D) / 2, total: E * H * D });
    // Layer 0 was not chosen: untouched.
    expect(zerosPerColumn((moeLayers(src.model)[0]!.layer.experts as unknown as { w1: tf.Variable }).w1).every((z) => z === 0)).toBe(true);
  });

  it('the gate is part of the metric: with top-2 routing the mask follows the gated statistic', () => {
    const src = source(2);
    const obs = observe(src.model);
    const l = moeLayers(src.model)[0]!;
    const s = obs.layer(l.path);
    const bank = l.layer.experts as unknown as { w1: tf.Variable };
    const w1 = bank.w1.dataSync().slice();
    moePrune(obs, src, { sparsity: 0.25 });
    const now = bank.w1.dataSync();
    for (let e = 0; e < E; e++) {
      const off = e * D * H;
      const want = wandaMask(w1.subarray(off, off + D * H), D, H, s.inSqGated!.subarray(e * D, (e + 1) * D), 0.25);
      for (let k = 0; k < D * H; k++) expect(now[off + k] === 0).toBe(!want[k]);
    }
    // The pruned model still runs.
    expect(Number.isFinite(tf.tidy(() => src.model.forward(ids, forwardContext(new Rng(0), false)).dataSync()[0]!))).toBe(true);
  });

  it('one-line errors: bad sparsity, no hidden statistic, a bank it cannot read, an unknown layer', () => {
    const src = source(2);
    expect(() => moePrune(observe(src.model), src, { sparsity: 0 })).toThrow(/must be in \(0, 1\), got 0/);
    expect(() => moePrune(observe(src.model, false), src, { sparsity: 0.5 })).toThrow(
      /MoE-Pruner needs the experts' gated hidden norms; calibrate with the observer option hidden: true/,
    );
    expect(() => moePrune(observe(src.model), src, { sparsity: 0.5, layers: ['transformer.layers.9.ffn'] })).toThrow(
      /no moe layer "transformer.layers.9.ffn"; moe layers: transformer.layers.0.ffn, transformer.layers.1.ffn/,
    );
    const sigma = source(2, { type: 'sigma-moe', size: 4 });
    expect(() => moePrune(observe(sigma.model), sigma, { sparsity: 0.5 })).toThrow(/MoE-Pruner needs an mlp \/ glu expert bank/);
  });
});
