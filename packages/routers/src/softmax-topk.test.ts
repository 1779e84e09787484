import { DispatchPlan, dropPriority, forwardContext, type MoELayer, Rng, tf, zLoss } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeFFN, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { sequenceSwitchLoss, switchLoss } from './balance.js';
import { planFromChoices } from './common.js';
import { SoftmaxTopKRouter, type SoftmaxTopKOptions } from './softmax-topk.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const base: SoftmaxTopKOptions = { k: 2, renormalize: true, noisy: false, balanceCoef: 0.01, zLossCoef: 0.001 };

/** A router whose logits are its input (W = I), so tests can route fixed logits. */
function identityRouter(E: number, o: Partial<SoftmaxTopKOptions> = {}): SoftmaxTopKRouter {
  const r = new SoftmaxTopKRouter(E, E, { ...base, ...o }, new Rng(0));
  r.weight.assign(tf.eye(E));
  return r;
}

const Z = [
  [2, 1, 0.5, -1],
  [0, 3, 1, 2],
  [-1, -2, 0.1, 0.3],
];
const softmax = (row: number[]) => {
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
};
const top2 = (row: number[]) =>
  row
    .map((v, i) => [v, i] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, 2)
    .map(([, i]) => i);

/** weight of token t's s-th choice from a slot-major plan. */
function weightsOf(plan: DispatchPlan, w: Float32Array | Int32Array | Uint8Array) {
  const out: Record<string, number> = {};
  for (let n = 0; n < plan.size; n++) out[`${plan.tokenIndex[n]}:${plan.expertIndex[n]}`] = w[n]!;
  return out;
}

describe('softmax-topk: weight rules', () => {
  it('raw, renormalised (= softmax of the selected logits) and scaled weights on fixed logits', () => {
    const x = tf.tensor2d(Z);
    const raw = identityRouter(4, { renormalize: false }).route(x, forwardContext(new Rng(1), false));
    const ren = identityRouter(4).route(x, forwardContext(new Rng(1), false));
    const scaled = identityRouter(4, { scale: 2.5 }).route(x, forwardContext(new Rng(1), false));
    const wr = weightsOf(raw.plan, raw.weight!.dataSync() as Float32Array);
    const wn = weightsOf(ren.plan, ren.weight!.dataSync() as Float32Array);
    const ws = weightsOf(scaled.plan, scaled.weight!.dataSync() as Float32Array);
    Z.forEach((row, t) => {
      const p = softmax(row);
      const sel = top2(row);
      const selExp = sel.map((e) => Math.exp(row[e]!));
      sel.forEach((e, j) => {
        expect(wr[`${t}:${e}`]).toBeCloseTo(p[e]!, 6);
        expect(wn[`${t}:${e}`]).toBeCloseTo(p[e]! / (p[sel[0]!]! + p[sel[1]!]!), 6);
        // softmax over the selected logits: identical to renormalised
        expect(wn[`${t}:${e}`]).toBeCloseTo(selExp[j]! / (selExp[0]! + selExp[1]!), 6);
        expect(ws[`${t}:${e}`]).toBeCloseTo((2.5 * p[e]!) / (p[sel[0]!]! + p[sel[1]!]!), 5);
      });
    });
    // indices distinct per token, first choice = argmax
    for (let t = 0; t < 3; t++) {
      expect(ren.plan.expertIndex[t]).toBe(top2(Z[t]!)[0]);
      expect(ren.plan.expertIndex[3 + t]).toBe(top2(Z[t]!)[1]);
    }
  });

  it('renormalised top-2 gives zero task gradient to the non-selected logits; raw weights give them gradient', () => {
    const x = tf.tensor2d(Z);
    const c = tf.tensor1d([0.3, -1.2, 0.7, 1.1, 0.4, -0.5]);
    const grad = (renormalize: boolean) => {
      const r = identityRouter(4, { renormalize });
      return tf
        .grad((xx: tf.Tensor) => tf.sum(tf.mul(r.route(xx as tf.Tensor2D, forwardContext(new Rng(1), false)).weight!, c)))(x)
        .arraySync() as number[][];
    };
    const gn = grad(true);
    const gr = grad(false);
    Z.forEach((row, t) => {
      const sel = top2(row);
      for (let e = 0; e < 4; e++) {
        if (sel.includes(e)) expect(Math.abs(gn[t]![e]!)).toBeGreaterThan(1e-4);
        else {
          expect(Math.abs(gn[t]![e]!)).toBeLessThan(1e-7);
          expect(Math.abs(gr[t]![e]!)).toBeGreaterThan(1e-4);
        }
      }
    });
  });

  it('top-1 with renormalise is rejected (entry and class); k > experts names the JSON path', () => {
    expect(() => makeRouter({ type: 'softmax-topk', k: 1 })).toThrow(/\$\.block\.ffn\.router\.renormalize: k = 1 with renormalize: true/);
    expect(() => new SoftmaxTopKRouter(4, 4, { ...base, k: 1 }, new Rng(0))).toThrow(/no task gradient/);
    expect(() => makeRouter({ type: 'softmax-topk', k: 5 })).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds the number of experts \(4\)/);
    expect(() => makeRouter({ type: 'softmax-topk', k: 0 })).toThrow(/\$\.block\.ffn\.router\.k/);
    expect(() => makeRouter({ type: 'softmax-topk', balanceCoef: -1 })).toThrow(/\$\.block\.ffn\.router\.balanceCoef/);
    expect(() => makeRouter({ type: 'noisy-topk', k: 1 })).toThrow(/\$\.block\.ffn\.router\.k: noisy top-k with k = 1/);
    expect(() => makeRouter({ type: 'softmax-topk', loadCoef: 0.1 })).toThrow(/\$\.block\.ffn\.router\.loadCoef: the smooth load loss needs learned noise/);
    // Switch top-1 uses the raw weight, which is accepted
    expect(makeRouter<SoftmaxTopKRouter>({ type: 'switch' }).options.renormalize).toBe(false);
  });

  it('with E = K and renormalise the weights are the dense softmax', () => {
    const r = identityRouter(4, { k: 4 });
    const { plan, weight } = r.route(tf.tensor2d(Z), forwardContext(new Rng(1), false));
    const w = weightsOf(plan, weight!.dataSync() as Float32Array);
    Z.forEach((row, t) => {
      softmax(row).forEach((p, e) => {
        expect(w[`${t}:${e}`]).toBeCloseTo(p, 6);
      });
    });
  });
});

describe('balance losses', () => {
  it('canonical Switch loss is 1 under uniform routing; HF parity = k × canonical; sequence scope = mean of per-sequence losses', () => {
    const E = 4;
    const N = 8;
    const uniform = tf.fill([N, E], 1 / E) as tf.Tensor2D;
    const counts = [4, 4, 4, 4]; // k = 2: 16 assignments
    expect(switchLoss(uniform, counts, 2).dataSync()[0]).toBeCloseTo(1, 6);

    const rng = new Rng(3);
    const x = tf.tensor2d(rng.normalArray(N * E), [N, E]);
    const ctx = (hf: boolean, scope: 'batch' | 'sequence') => {
      const r = identityRouter(E, { balanceParity: hf ? 'hf' : 'canonical', balanceScope: scope, zLossCoef: 0 });
      const c = forwardContext(new Rng(1), true);
      const res = r.route(x, c, { batchShape: [2, 4] });
      return { value: c.aux[0]!.value.dataSync()[0]!, res };
    };
    const canon = ctx(false, 'batch');
    expect(ctx(true, 'batch').value).toBeCloseTo(2 * canon.value, 5);
    // the canonical value from the definition
    const p = tf.softmax(x).arraySync() as number[][];
    const cnt = Array.from(canon.res.plan.counts);
    const P = [0, 1, 2, 3].map((e) => p.reduce((s, row) => s + row[e]!, 0) / N);
    expect(canon.value).toBeCloseTo((E / (2 * N)) * cnt.reduce((s, c, e) => s + c * P[e]!, 0), 5);
    // sequence scope: mean over the two sequences of their own canonical loss
    const seq = ctx(false, 'sequence');
    const per = [0, 1].map((b) => {
      const rows = [0, 1, 2, 3].map((t) => b * 4 + t);
      const sub = planFromChoices(Int32Array.from(rows.flatMap((t) => [seq.res.plan.expertIndex[t]!, seq.res.plan.expertIndex[N + t]!])), 4, 2, E).plan;
      return switchLoss(tf.tensor2d(rows.map((t) => p[t]!)), Array.from(sub.counts), 2).dataSync()[0]!;
    });
    expect(seq.value).toBeCloseTo((per[0]! + per[1]!) / 2, 5);
    expect(
      sequenceSwitchLoss(
        uniform,
        new DispatchPlan(Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7]), Int32Array.from([0, 1, 2, 3, 0, 1, 2, 3]), 8, 4),
        2,
        4,
        1,
      ).dataSync()[0],
    ).toBeCloseTo(1, 6);
  });

  it('z-loss = mean(logsumexp²); its gradient is 2·lse·softmax/N', () => {
    const z = tf.tensor2d(Z);
    const lse = Z.map((row) => Math.log(row.reduce((s, v) => s + Math.exp(v), 0)));
    expect(zLoss(z).dataSync()[0]).toBeCloseTo(lse.reduce((s, v) => s + v * v, 0) / 3, 5);
    const g = tf
      .grad((zz: tf.Tensor) => zLoss(zz as tf.Tensor2D))(z)
      .arraySync() as number[][];
    Z.forEach((row, t) => {
      softmax(row).forEach((p, e) => {
        expect(g[t]![e]).toBeCloseTo((2 * lse[t]! * p) / 3, 5);
      });
    });
  });

  it('global scope: counts accumulate over the micro-batches of a step (rescaled to the call), reset after the step', () => {
    const r = identityRouter(4, { balanceScope: 'global', zLossCoef: 0 });
    const b = identityRouter(4, { zLossCoef: 0 });
    const x1 = tf.tensor2d(new Rng(11).normalArray(6 * 4, 2), [6, 4]);
    const x2 = tf.tensor2d(new Rng(12).normalArray(6 * 4, 2), [6, 4]);
    const value = (router: SoftmaxTopKRouter, x: tf.Tensor2D) => {
      const c = forwardContext(new Rng(1), true);
      const res = router.route(x, c);
      return { v: c.aux[0]!.value.dataSync()[0]!, counts: Array.from(res.plan.counts), p: res.probs!.arraySync() as number[][] };
    };
    const first = value(r, x1);
    expect(first.v).toBeCloseTo(value(b, x1).v, 6);
    const second = value(r, x2);
    const run = first.counts.map((c, e) => c + second.counts[e]!);
    const P = [0, 1, 2, 3].map((e) => second.p.reduce((s, row) => s + row[e]!, 0) / 6);
    // running totals rescaled to this call's 12 assignments: E/(k·N) Σ (run·12/24) P
    expect(second.v).toBeCloseTo((4 / (2 * 6)) * run.reduce((s, c, e) => s + ((c * 12) / 24) * P[e]!, 0), 5);
    r.afterStep();
    expect(value(r, x2).v).toBeCloseTo(value(b, x2).v, 6);
  });

  it('softmax-topk expert bias: a constant shift changes nothing; the bias never enters the weights', () => {
    const r = identityRouter(4, { expertBias: true, biasUpdateRate: 0.1 });
    const x = tf.tensor2d(Z);
    const run = () => {
      const res = r.route(x, forwardContext(new Rng(1), false));
      return { e: Array.from(res.plan.expertIndex), w: Array.from(res.weight!.dataSync()) };
    };
    r.bias!.bias.assign(tf.tensor1d([0.3, -0.2, 0.1, 0]));
    const a = run();
    r.bias!.bias.assign(tf.add(r.bias!.bias, 5));
    const b2 = run();
    expect(b2.e).toEqual(a.e);
    for (let i = 0; i < a.w.length; i++) expect(b2.w[i]).toBeCloseTo(a.w[i]!, 6);
    // training records counts; afterStep moves b by ±u towards balance
    r.bias!.bias.assign(tf.zeros([4]));
    r.route(x, forwardContext(new Rng(1), true));
    r.afterStep();
    const bias = Array.from(r.bias!.bias.dataSync());
    for (const v of bias) expect(Math.abs(Math.abs(v) - 0.1)).toBeLessThan(1e-6);
  });

  it('balanceUsage gates: BTX mean-gate loss E·Σ_e mean_t g_te · mean_t p_te (1 when uniform), with gradient through the gates', () => {
    const r = identityRouter(4, { k: 2, renormalize: true, balanceUsage: 'gates', zLossCoef: 0 });
    const ctx = forwardContext(new Rng(1), true);
    const res = r.route(tf.tensor2d(Z), ctx);
    const [aux] = ctx.aux;
    expect(aux!.name).toBe('switch_balance');
    // reference from the softmax of the logits: top-2 renormalised gates, dense probabilities
    const p = Z.map((z) => {
      const e = z.map(Math.exp);
      const s = e.reduce((a, b) => a + b, 0);
      return e.map((v) => v / s);
    });
    const u = [0, 0, 0, 0];
    const P = [0, 0, 0, 0];
    for (const row of p) {
      const top = row
        .map((v, e) => [v, e] as const)
        .sort((a, b) => b[0] - a[0])
        .slice(0, 2);
      const sum = top[0]![0] + top[1]![0];
      for (const [v, e] of top) u[e]! += v / sum / 3;
      row.forEach((v, e) => {
        P[e]! += v / 3;
      });
    }
    const want = 4 * u.reduce((acc, ue, e) => acc + ue * P[e]!, 0);
    expect(aux!.value.dataSync()[0]).toBeCloseTo(want, 5);
    const counts = identityRouter(4, { k: 2, renormalize: true, zLossCoef: 0 });
    const cctx = forwardContext(new Rng(1), true);
    counts.route(tf.tensor2d(Z), cctx);
    expect(Math.abs(cctx.aux[0]!.value.dataSync()[0]! - want)).toBeGreaterThan(1e-3);
    expect(res.weight).toBeDefined();
    // uniform logits: u = P = 1/E, L = 1
    const flat = identityRouter(4, { k: 2, renormalize: true, balanceUsage: 'gates', zLossCoef: 0 });
    const fctx = forwardContext(new Rng(1), true);
    flat.route(tf.zeros([5, 4]) as tf.Tensor2D, fctx);
    expect(fctx.aux[0]!.value.dataSync()[0]).toBeCloseTo(1, 6);
    // the gates carry gradient: d L / d W differs from the counts form's
    const x = tf.tensor2d(Z);
    const grad = (router: SoftmaxTopKRouter) =>
      tf
        .variableGrads(() => {
          const c = forwardContext(new Rng(1), true);
          router.route(x, c);
          return c.aux[0]!.value;
        }, [router.weight])
        .grads[router.weight.name]!.dataSync();
    const gG = grad(r);
    const gC = grad(counts);
    let diff = 0;
    for (let i = 0; i < gG.length; i++) diff = Math.max(diff, Math.abs(gG[i]! - gC[i]!));
    expect(diff).toBeGreaterThan(1e-4);
    expect(() => makeRouter({ type: 'softmax-topk', balanceUsage: 'gates', balanceScope: 'sequence' }, 8, 4)).toThrow(
      /balanceUsage: the mean-gate balance loss is per micro-batch/,
    );
  });

  it('aux losses are pushed unscaled with their coefficients, in training only', () => {
    const r = identityRouter(4);
    const train = forwardContext(new Rng(1), true);
    r.route(tf.tensor2d(Z), train);
    expect(train.aux.map((a) => [a.name, a.coef])).toEqual([
      ['switch_balance', 0.01],
      ['z_loss', 0.001],
    ]);
    const ev = forwardContext(new Rng(1), false);
    r.route(tf.tensor2d(Z), ev);
    expect(ev.aux).toHaveLength(0);
  });
});

describe('capacity and drops through the moe layer', () => {
  const layer = (extra: Record<string, unknown>) =>
    makeFFN<MoELayer>({ type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 8 }, ...extra }, 8);

  it('kept counts ≤ C = ceil(cf·k·N/E); dropRate counts the drops; dropless drops nothing', () => {
    const x = tf.tensor3d(new Rng(4).normalArray(2 * 16 * 8), [2, 16, 8]);
    for (const cf of [0.5, 1]) {
      const ctx = forwardContext(new Rng(1), true);
      layer({ capacityFactor: cf }).forward(x, ctx);
      const s = ctx.routing[0]!;
      const C = Math.ceil((cf * 2 * 32) / 4);
      for (const c of s.counts) expect(c).toBeLessThanOrEqual(C);
      const intended = s.intendedCounts!.reduce((a, b) => a + b, 0);
      const kept = s.counts.reduce((a, b) => a + b, 0);
      expect(intended).toBe(64);
      expect(s.dropRate).toBeCloseTo(1 - kept / intended, 9);
      if (cf === 0.5) expect(s.dropRate).toBeGreaterThanOrEqual(0.5);
    }
    const ctx = forwardContext(new Rng(1), true);
    layer({ capacityFactor: 0 }).forward(x, ctx);
    expect(ctx.routing[0]!.dropRate).toBe(0);
    expect(ctx.routing[0]!.tokenDropRate).toBe(0);
  });

  it('position priority keeps first choices before second choices; BPR keeps the highest-probability tokens', () => {
    // every token: first choice expert 0, second choice expert 1; expert 1 is also the first choice of tokens 4..7
    const choices = Int32Array.from([0, 1, 0, 1, 0, 1, 0, 1, 1, 2, 1, 2, 1, 2, 1, 2]);
    const { plan } = planFromChoices(choices, 8, 2, 4);
    const keep = (policy: 'position' | 'batch-prioritized', w: number[] | null) => {
      const pr = dropPriority(plan, policy, w);
      const order = pr ?? Int32Array.from({ length: plan.size }, (_, i) => i);
      const used = [0, 0, 0, 0];
      const kept: number[] = [];
      for (const n of order) {
        if (used[plan.expertIndex[n]!]! >= 4) continue;
        used[plan.expertIndex[n]!]!++;
        kept.push(n);
      }
      return kept;
    };
    // expert 1 with capacity 4: the first choices of tokens 4..7 win over the second choices of tokens 0..3
    const kept = keep('position', null).filter((n) => plan.expertIndex[n] === 1);
    expect(kept.map((n) => plan.tokenIndex[n]).sort()).toEqual([4, 5, 6, 7]);
    // BPR over first choices of expert 0 with capacity 2 keeps the two tokens of highest top-1 weight
    const { plan: p0 } = planFromChoices(Int32Array.from([0, 0, 0, 0]), 4, 1, 4);
    const w = [0.3, 0.9, 0.5, 0.8];
    const pr = dropPriority(p0, 'batch-prioritized', w)!;
    expect([p0.tokenIndex[pr[0]!], p0.tokenIndex[pr[1]!]]).toEqual([1, 3]);
  });
});

describe('switch top-1', () => {
  it('one expert per token with the raw softmax weight; cf ≥ E drops nothing; its loss is 1 under uniform routing', () => {
    const r = makeRouter<SoftmaxTopKRouter>({ type: 'switch' }, 8, 4);
    const x = tf.tensor2d(new Rng(8).normalArray(12 * 8), [12, 8]);
    const ctx = forwardContext(new Rng(1), false);
    const { plan, weight, probs } = r.route(x, ctx);
    expect(plan.size).toBe(12);
    const p = probs!.arraySync() as number[][];
    const w = weight!.dataSync();
    for (let t = 0; t < 12; t++) {
      expect(plan.expertIndex[t]).toBe(p[t]!.indexOf(Math.max(...p[t]!)));
      expect(w[t]).toBeCloseTo(Math.max(...p[t]!), 6);
    }
    const layer = makeFFN<MoELayer>({ type: 'moe', experts: 4, router: 'switch', expert: { type: 'mlp', hidden: 8 }, capacityFactor: 4 }, 8);
    const c2 = forwardContext(new Rng(1), true);
    layer.forward(tf.tensor3d(new Rng(9).normalArray(2 * 8 * 8, 3), [2, 8, 8]), c2);
    expect(c2.routing[0]!.dropRate).toBe(0);
    expect(switchLoss(tf.fill([8, 4], 0.25) as tf.Tensor2D, [2, 2, 2, 2], 1).dataSync()[0]).toBeCloseTo(1, 6);
  });
});

describe('HF parity presets', () => {
  it('mixtral: top-2 renormalised, aux = 2 × canonical with coef 0.001; olmoe: top-8 raw, coef 0.01', () => {
    const x = tf.tensor2d(new Rng(7).normalArray(6 * 8), [6, 8]);
    const mix = makeRouter<SoftmaxTopKRouter>({ type: 'mixtral' }, 8, 8);
    const can = new SoftmaxTopKRouter(8, 8, { ...base, zLossCoef: 0 }, new Rng(0));
    can.weight.assign(mix.weight);
    const c1 = forwardContext(new Rng(1), true);
    const c2 = forwardContext(new Rng(1), true);
    const a = mix.route(x, c1);
    can.route(x, c2);
    expect(c1.aux).toHaveLength(1);
    expect(c1.aux[0]!.coef).toBe(0.001);
    expect(c1.aux[0]!.value.dataSync()[0]).toBeCloseTo(2 * c2.aux[0]!.value.dataSync()[0]!, 5);
    const sums = new Array(6).fill(0);
    const w = a.weight!.dataSync();
    for (let n = 0; n < a.plan.size; n++) sums[a.plan.tokenIndex[n]!] += w[n]!;
    for (const v of sums) expect(v).toBeCloseTo(1, 6);
    const ol = makeRouter<SoftmaxTopKRouter>({ type: 'olmoe' }, 8, 64);
    expect(ol.options).toMatchObject({ k: 8, renormalize: false, balanceCoef: 0.01, balanceParity: 'hf' });
    expect(() => makeRouter({ type: 'olmoe' }, 8, 4)).toThrow(/\$\.block\.ffn\.router\.k: k = 8 exceeds the number of experts \(4\)/);
  });

  it('the moe layer rejects a negative capacity factor and minimum capacity 0 with the JSON path', () => {
    const node = (o: Record<string, unknown>) => ({ type: 'moe', experts: 4, router: 'softmax-topk', expert: { type: 'mlp', hidden: 8 }, ...o });
    expect(() => makeFFN(node({ capacityFactor: -1 }))).toThrow(/\$\.block\.ffn\.capacityFactor/);
    expect(() => makeFFN(node({ evalCapacityFactor: -0.5 }))).toThrow(/\$\.block\.ffn\.evalCapacityFactor/);
    expect(() => makeFFN(node({ minCapacity: 0 }))).toThrow(/\$\.block\.ffn\.minCapacity/);
    expect(() => makeFFN(node({ dropPolicy: 'lifo' }))).toThrow(/\$\.block\.ffn\.dropPolicy/);
  });
});

describe('softmax top-k family: training', () => {
  it('softmax-topk, noisy-topk and switch tiny LMs learn (loss falls)', () => {
    for (const router of [{ type: 'softmax-topk', k: 2 }, { type: 'noisy-topk' }, { type: 'switch' }]) {
      const losses = trainLosses(tinyLM(router));
      expect(losses.every(Number.isFinite)).toBe(true);
      expect(lossRatio(losses), router.type).toBeLessThan(0.85);
    }
  });

  it('noisy top-k: eval is deterministic, training is noisy; zero init ties are broken by the noise', () => {
    const r = makeRouter<SoftmaxTopKRouter>({ type: 'noisy-topk' }, 8, 4);
    const x = tf.tensor2d(new Rng(2).normalArray(16 * 8), [16, 8]);
    const a = r.route(x, forwardContext(new Rng(1), false)).plan.expertIndex;
    const b = r.route(x, forwardContext(new Rng(2), false)).plan.expertIndex;
    expect(Array.from(a)).toEqual(Array.from(b));
    // zero-initialised W: every eval logit ties, so the lowest indices 0, 1 win
    expect(new Set(a)).toEqual(new Set([0, 1]));
    const t = r.route(x, forwardContext(new Rng(3), true));
    expect(new Set(t.plan.expertIndex).size).toBeGreaterThan(2);
    const ctx = forwardContext(new Rng(3), true);
    r.route(x, ctx);
    expect(ctx.aux.map((l) => l.name)).toEqual(['importance', 'load']);
    for (const l of ctx.aux) expect(Number.isFinite(l.value.dataSync()[0])).toBe(true);
  });

  it('TopK kernel gradient (engine fix) matches finite differences', () => {
    const x = tf.tensor1d([0.3, 2.0, -1.0, 1.2, 0.7]);
    const c = tf.tensor1d([1.5, -0.5]);
    const f = (v: tf.Tensor) => tf.sum(tf.mul(tf.square(tf.topk(v, 2).values), c));
    const g = tf.grad(f)(x).dataSync();
    const xs = Array.from(x.dataSync());
    for (let i = 0; i < 5; i++) {
      const h = 1e-2;
      const up = xs.slice();
      up[i]! += h;
      const dn = xs.slice();
      dn[i]! -= h;
      const fd = (f(tf.tensor1d(up)).dataSync()[0]! - f(tf.tensor1d(dn)).dataSync()[0]!) / (2 * h);
      expect(g[i]).toBeCloseTo(fd, 2);
    }
  });
});

describe('noisy top-k smooth load', () => {
  it('Σ_i Load_i ≈ k·N when the noise is small, reported in the layer metrics; Load → the hard counts', () => {
    const N = 64;
    const r = makeRouter<SoftmaxTopKRouter>({ type: 'softmax-topk', k: 2, noisy: true }, 8, 4);
    // positive inputs and W_noise = −10: softplus(W_noise x) ≈ 0, so σ = 1e-2 (the small-noise limit)
    r.noiseWeight!.assign(tf.fill([4, 8], -10));
    const x = tf.tensor2d(
      Float32Array.from(new Rng(4).normalArray(N * 8), (v) => Math.abs(v) + 0.1),
      [N, 8],
    );
    const res = r.route(x, forwardContext(new Rng(5), true));
    expect(res.extra!.smoothLoadRatio).toBeGreaterThan(0.97);
    expect(res.extra!.smoothLoadRatio).toBeLessThan(1.03);
    expect(res.extra!.smoothLoadSum).toBeCloseTo(res.extra!.smoothLoadRatio! * 2 * N, 3);
    // σ → 1e-2 on clean logits (eval routing): the smooth load approaches the hard assignment counts
    const clean = r.route(x, forwardContext(new Rng(5), false));
    const tokenMajor = new Int32Array(N * 2);
    for (let n = 0; n < clean.plan.size; n++) tokenMajor[clean.plan.tokenIndex[n]! * 2 + (n < N ? 0 : 1)] = clean.plan.expertIndex[n]!;
    const load = r.smoothLoad(clean.logits!, clean.logits!, tf.fill([N, 4], 1e-2) as tf.Tensor2D, tokenMajor).dataSync();
    for (let e = 0; e < 4; e++) expect(Math.abs(load[e]! - clean.plan.counts[e]!)).toBeLessThan(0.02 * N);
    // with the default noise scale (W_noise = 0: σ ≈ 0.70) the sum is still reported, and eval reports nothing
    const layer = makeFFN<MoELayer>({ type: 'moe', experts: 4, router: { type: 'noisy-topk', zeroInit: false }, expert: { type: 'mlp', hidden: 8 } }, 8);
    const ctx = forwardContext(new Rng(6), true);
    layer.forward(tf.tensor3d(new Rng(7).normalArray(2 * 8 * 8), [2, 8, 8]), ctx);
    expect(ctx.routing[0]!.extra!.smoothLoadRatio).toBeGreaterThan(0.5);
    expect(ctx.routing[0]!.extra!.smoothLoadRatio).toBeLessThan(1.5);
    const ev = forwardContext(new Rng(6), false);
    layer.forward(tf.tensor3d(new Rng(7).normalArray(2 * 8 * 8), [2, 8, 8]), ev);
    expect(ev.routing[0]!.extra?.smoothLoadRatio).toBeUndefined();
  });
});

describe('qwen2-moe preset and the sigmoid-gated shared expert', () => {
  const node = (o: Record<string, unknown>) => ({ type: 'moe', experts: 4, router: { type: 'qwen2-moe', k: 2 }, expert: { type: 'mlp', hidden: 8 }, ...o });
  const x = tf.tensor3d(new Rng(3).normalArray(2 * 3 * 8), [2, 3, 8]);
  const out = (layer: MoELayer) => Array.from(layer.forward(x, forwardContext(new Rng(1), false)).dataSync());

  it('qwen2-moe: top-4 raw weights, aux 0.001 in the HF ×k form', () => {
    expect(makeRouter<SoftmaxTopKRouter>({ type: 'qwen2-moe' }, 8, 60).options).toMatchObject({
      k: 4,
      renormalize: false,
      balanceCoef: 0.001,
      balanceParity: 'hf',
      zLossCoef: 0,
    });
  });

  it("default sharedGate 'none' adds the shared output as is; 'sigmoid' scales it by σ(x·w), w = shared_expert_gate.weight [1, d]", () => {
    const shared = { type: 'mlp', hidden: 8, count: 1 };
    const routed = out(makeFFN<MoELayer>(node({}), 8));
    const plain = makeFFN<MoELayer>(node({ shared }), 8);
    expect(plain.namedParameters().some(([n]) => n.includes('gate'))).toBe(false);
    const ungated = out(plain);
    // default: out = routed + shared(x), the shared bank applied to every token with weight 1
    const flat = tf.reshape(x, [6, 8]) as tf.Tensor2D;
    const S = Array.from(
      plain
        .shared!.apply(flat, new DispatchPlan(new Int32Array([0, 1, 2, 3, 4, 5]), new Int32Array(6), 6, 1), null, forwardContext(new Rng(1), false))
        .dataSync(),
    );
    ungated.forEach((v, i) => {
      expect(v).toBeCloseTo(routed[i]! + S[i]!, 5);
    });
    const gated = makeFFN<MoELayer>(node({ shared, sharedGate: 'sigmoid' }), 8);
    const names = gated.namedParameters().map(([n]) => n);
    expect(names).toContain('shared_expert_gate.weight');
    const w = gated.sharedExpertGate!.weight;
    expect(w.shape).toEqual([1, 8]);
    const g = Array.from(tf.sigmoid(tf.matMul(flat, w, false, true)).dataSync());
    const y = out(gated);
    for (let t = 0; t < 6; t++) for (let j = 0; j < 8; j++) expect(y[t * 8 + j]).toBeCloseTo(routed[t * 8 + j]! + g[t]! * S[t * 8 + j]!, 5);
    expect(Math.max(...g.map((v) => Math.abs(v - 0.5)))).toBeGreaterThan(1e-3); // the gate is not a constant ½
    // the gate gets a gradient
    const { grads } = tf.variableGrads(() => tf.sum(tf.square(gated.forward(x, forwardContext(new Rng(1), true)))) as tf.Scalar, [w]);
    expect(tf.sum(tf.abs(grads[w.name]!)).dataSync()[0]).toBeGreaterThan(0);
    expect(() => makeFFN(node({ sharedGate: 'sigmoid' }), 8)).toThrow(/\$\.block\.ffn\.sharedGate.*has none/s);
    expect(() => makeFFN(node({ shared, sharedGate: 'tanh' }), 8)).toThrow(/\$\.block\.ffn\.sharedGate/);
  });

  it('a Qwen2-MoE-style tiny LM (qwen2-moe router + gated shared expert) learns', () => {
    const losses = trainLosses(tinyLM({ type: 'qwen2-moe', k: 2 }, { shared: { type: 'mlp', hidden: 16, count: 1 }, sharedGate: 'sigmoid' }));
    expect(lossRatio(losses)).toBeLessThan(0.85);
  });
});
