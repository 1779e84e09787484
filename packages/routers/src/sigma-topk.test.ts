import { corePlugin, createRegistry, buildNode, entropyBalanceReg, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { routers } from './index.js';
import { renormRowsKeepStd, SigmaTopKRouter } from './sigma-topk.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const opts = { k: 2, expertDropout: 0, balance: 'sequence' as const, balanceCoef: 0.01 };

/** Plain-JS reference of the regulariser: groups of rows [g][n][E] -> mean_g sum_e pbar log pbar. */
function refReg(groups: number[][][]): number {
  let tot = 0;
  for (const rows of groups) {
    const E = rows[0]!.length;
    const pbar = new Array(E).fill(0);
    for (const l of rows) {
      const m = Math.max(...l);
      const z = l.reduce((s, v) => s + Math.exp(v - m), 0);
      l.forEach((v, e) => {
        pbar[e] += Math.exp(v - m) / z / rows.length;
      });
    }
    tot += pbar.reduce((s, p) => s + p * Math.log(p), 0);
  }
  return tot / groups.length;
}

describe('sigma-topk router', () => {
  it('gates are the sigmoids of the top-k logits, not renormalised', () => {
    const rng = new Rng(1);
    const r = new SigmaTopKRouter(6, 5, opts, rng);
    const x = tf.tensor2d(rng.normalArray(4 * 6), [4, 6]);
    const { plan, weight } = r.route(x, forwardContext(rng, false));
    const logits = r.logits(x).arraySync();
    const w = weight!.dataSync();
    expect(plan.size).toBe(8);
    for (let n = 0; n < plan.size; n++) {
      const t = plan.tokenIndex[n]!;
      const e = plan.expertIndex[n]!;
      const row = logits[t]!;
      // chosen experts are the two largest logits of the token
      expect(row.filter((v) => v > row[e]!).length).toBeLessThan(2);
      expect(w[n]).toBeCloseTo(1 / (1 + Math.exp(-row[e]!)), 6);
    }
    // not renormalised: the two gates of a token do not sum to 1
    let sum0 = 0;
    for (let n = 0; n < plan.size; n++) if (plan.tokenIndex[n] === 0) sum0 += w[n]!;
    expect(Math.abs(sum0 - 1)).toBeGreaterThan(1e-3);
  });

  it('init: equal router row norms, global std kept (renorm_keep_std)', () => {
    const rng = new Rng(2);
    const w0 = rng.normalArray(16 * 64, 0.5);
    const w = renormRowsKeepStd(w0, 16, 64);
    const norms = Array.from({ length: 16 }, (_, r) => Math.hypot(...w.subarray(r * 64, r * 64 + 64)));
    for (const n of norms) expect(n).toBeCloseTo(norms[0]!, 4);
    const std = (a: Float32Array) => {
      const m = a.reduce((s, v) => s + v, 0) / a.length;
      return Math.sqrt(a.reduce((s, v) => s + (v - m) ** 2, 0) / (a.length - 1));
    };
    expect(std(w)).toBeCloseTo(std(w0), 4);
  });

  it('per-sequence regulariser spans all calls of the forward pass; global pools every token', () => {
    const rng = new Rng(3);
    const E = 4;
    const r = new SigmaTopKRouter(5, E, opts, rng);
    const g = new SigmaTopKRouter(5, E, { ...opts, balance: 'global' }, new Rng(3));
    const B = 2;
    const T = 3;
    const xs = [0, 1].map(() => tf.tensor2d(rng.normalArray(B * T * 5), [B * T, 5]));
    const ctx = forwardContext(rng, true);
    for (const x of xs) r.route(x, ctx, { batchShape: [B, T] });
    r.finalizeForward(ctx);
    const gctx = forwardContext(rng, true);
    for (const x of xs) g.route(x, gctx, { batchShape: [B, T] });
    g.finalizeForward(gctx);
    const calls = xs.map((x) => r.logits(x).arraySync());
    // sequence b = its T rows of call 0 and its T rows of call 1
    const seqGroups = [0, 1].map((b) => calls.flatMap((c) => c.slice(b * T, b * T + T)));
    expect(ctx.aux).toHaveLength(1);
    expect(ctx.aux[0]!.name).toBe('entropy_balance');
    expect(ctx.aux[0]!.coef).toBe(0.01);
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeCloseTo(refReg(seqGroups), 5);
    expect(gctx.aux[0]!.value.dataSync()[0]).toBeCloseTo(refReg([calls.flat()]), 5);
    // -log E <= reg <= 0
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeGreaterThanOrEqual(-Math.log(E) - 1e-6);
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeLessThanOrEqual(0);
    // the core helper agrees with the reference on a single group too
    expect(entropyBalanceReg(tf.tensor3d([calls[0]!])).dataSync()[0]).toBeCloseTo(refReg([calls[0]!]), 5);
  });

  it('no regulariser in eval mode; history of an unfinished pass is not mixed into the next', () => {
    const rng = new Rng(4);
    const r = new SigmaTopKRouter(5, 4, opts, rng);
    const x1 = tf.tensor2d(rng.normalArray(3 * 5), [3, 5]);
    const x2 = tf.tensor2d(rng.normalArray(3 * 5), [3, 5]);
    const ev = forwardContext(rng, false);
    r.route(x1, ev);
    r.finalizeForward(ev);
    expect(ev.aux).toHaveLength(0);
    r.route(x1, forwardContext(rng, true)); // never finalized
    const ctx = forwardContext(rng, true);
    r.route(x2, ctx);
    r.finalizeForward(ctx);
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeCloseTo(refReg([r.logits(x2).arraySync()]), 5);
  });

  it('expert dropout only acts in training and never selects a dropped expert', () => {
    const rng = new Rng(5);
    const r = new SigmaTopKRouter(6, 8, { ...opts, k: 3, expertDropout: 0.5 }, rng);
    const x = tf.tensor2d(rng.normalArray(64 * 6), [64, 6]);
    const evalPlan = r.route(x, forwardContext(rng, false)).plan;
    const trainPlan = r.route(x, forwardContext(new Rng(9), true)).plan;
    expect(evalPlan.size).toBe(64 * 3);
    let differs = 0;
    for (let n = 0; n < trainPlan.size; n++) if (trainPlan.expertIndex[n] !== evalPlan.expertIndex[n]) differs++;
    expect(differs).toBeGreaterThan(0);
    expect(trainPlan.size).toBeLessThanOrEqual(64 * 3);
  });

  it("the gates differentiate as σ of the chosen logits: d/dW of sum(gates) = Σ σ'(l_te) x_t over the chosen (t, e), also with dropout", () => {
    const rng = new Rng(6);
    const r = new SigmaTopKRouter(5, 7, { ...opts, k: 3, expertDropout: 0.7 }, rng);
    const x = tf.tensor2d(rng.normalArray(20 * 5), [20, 5]);
    let plan: ReturnType<SigmaTopKRouter['route']>['plan'] | undefined;
    const { grads } = tf.variableGrads(() => {
      const routed = r.route(x, forwardContext(new Rng(3), true));
      plan = routed.plan;
      return tf.sum(routed.weight!) as tf.Scalar;
    }, [r.weight]);
    const logits = r.logits(x).arraySync();
    const xs = x.arraySync();
    const want = Array.from({ length: 7 }, () => new Array(5).fill(0));
    for (let n = 0; n < plan!.size; n++) {
      const t = plan!.tokenIndex[n]!;
      const e = plan!.expertIndex[n]!;
      const s = 1 / (1 + Math.exp(-logits[t]![e]!));
      for (let j = 0; j < 5; j++) want[e]![j] += s * (1 - s) * xs[t]![j]!;
    }
    expect(plan!.size).toBeLessThan(20 * 3); // dropout left some tokens fewer than k experts
    const got = (grads[r.weight.name] as tf.Tensor2D).arraySync();
    for (let e = 0; e < 7; e++) for (let j = 0; j < 5; j++) expect(got[e]![j]).toBeCloseTo(want[e]![j]!, 5);
  });

  it('never chooses an expert whose logit is -Infinity (a masked expert), even with fewer than k left', () => {
    const rng = new Rng(8);
    const r = new SigmaTopKRouter(4, 3, { ...opts, k: 3 }, rng);
    const x = tf.tensor2d(rng.normalArray(6 * 4), [6, 4]);
    r.path = 'block.ffn.router';
    const ctx = forwardContext(rng, false);
    ctx.routerLogitEdits = new Map([['block.ffn', (l: tf.Tensor2D) => tf.add(l, tf.tensor1d([0, Number.NEGATIVE_INFINITY, 0])) as tf.Tensor2D]]);
    const { plan } = r.route(x, ctx);
    expect(plan.size).toBe(6 * 2);
    for (let n = 0; n < plan.size; n++) expect(plan.expertIndex[n]).not.toBe(1);
  });

  it('rejects k > experts with the JSON path', () => {
    const reg = createRegistry(corePlugin, routers);
    expect(() => buildNode<MoELayer>(reg, 'router', { type: 'sigma-topk', k: 9 }, '$.block.ffn.router', 0, { dModel: 8, numExperts: 8 })).toThrow(
      /\$\.block\.ffn\.router\.k: k = 9 exceeds the number of experts \(8\)/,
    );
    expect(() => buildNode(reg, 'router', { type: 'sigma-topk', balance: 'batch' }, '$.r', 0, { dModel: 8, numExperts: 8 })).toThrow(/\$\.r\.balance/);
  });
});
