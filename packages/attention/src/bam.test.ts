import { directionalGradCheck, MultiHeadAttention, Rng, tf } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { attentionBuilder, inferenceContext as ctx, input, maxDiff, useCpuBackend } from '../test/helpers.js';
import type { BamSoftMoA } from './bam.js';

useCpuBackend();

const build = attentionBuilder<BamSoftMoA>('bam-soft-moa');

/** [out, in] Linear weight -> [in, out] */
const t = (w: tf.Tensor) => tf.transpose(w);

/** Give every expert of `bam` the dense attention's weights (K/V into the shared pair when kv = shared). */
function copyDense(bam: BamSoftMoA, mha: MultiHeadAttention) {
  for (const e of bam.experts) {
    e.get('wq').assign(t(mha.q.weight));
    e.get('wo').assign(t(mha.o.weight));
    if (bam.options.kv === 'experts') {
      e.get('wk').assign(t(mha.k.weight));
      e.get('wv').assign(t(mha.v.weight));
    }
  }
  if (bam.sharedKv) {
    bam.sharedKv.get('wk').assign(t(mha.k.weight));
    bam.sharedKv.get('wv').assign(t(mha.v.weight));
  }
}

/** Expert j of a KV-experts BAM as a standalone dense attention. */
function expertAsMHA(bam: BamSoftMoA, j: number): MultiHeadAttention {
  const d = bam.dModel;
  const m = new MultiHeadAttention(d, { heads: bam.options.heads, headDim: bam.options.headDim }, new Rng(1));
  const e = bam.experts[j]!;
  m.q.weight.assign(t(e.get('wq')));
  m.k.weight.assign(t(bam.sharedKv ? bam.sharedKv.get('wk') : e.get('wk')));
  m.v.weight.assign(t(bam.sharedKv ? bam.sharedKv.get('wv') : e.get('wv')));
  m.o.weight.assign(t(e.get('wo')));
  return m;
}

describe('bam-soft-moa', () => {
  it('parameter names and shapes follow the registry entry (router [d, N], experts.{j}.wq [d, H·dh], …)', () => {
    const kvExperts = build({ experts: 3, heads: 4, kvHeads: 2, headDim: 8 }, 16);
    kvExperts.assignPaths();
    const shapes = Object.fromEntries(kvExperts.namedParameters().map(([n, v]) => [n, v.shape]));
    expect(shapes).toEqual({
      'router.weight': [16, 3],
      'experts.0.wq': [16, 32],
      'experts.0.wk': [16, 16],
      'experts.0.wv': [16, 16],
      'experts.0.wo': [32, 16],
      'experts.1.wq': [16, 32],
      'experts.1.wk': [16, 16],
      'experts.1.wv': [16, 16],
      'experts.1.wo': [32, 16],
      'experts.2.wq': [16, 32],
      'experts.2.wk': [16, 16],
      'experts.2.wv': [16, 16],
      'experts.2.wo': [32, 16],
    });
    const shared = build({ experts: 2, heads: 4, kv: 'shared' }, 16);
    shared.assignPaths();
    expect(shared.namedParameters().map(([n, v]) => `${n} ${v.shape}`)).toEqual([
      'router.weight 16,2',
      'experts.0.wq 16,16',
      'experts.0.wo 16,16',
      'experts.1.wq 16,16',
      'experts.1.wo 16,16',
      'shared_kv.wk 16,16',
      'shared_kv.wv 16,16',
    ]);
  });

  it('I6: KV experts that are all copies of one dense attention equal it, whatever the router', () => {
    const mha = new MultiHeadAttention(16, { heads: 4 }, new Rng(3));
    const bam = build({ experts: 3, heads: 4, routerInit: { dist: 'normal', std: 2 } });
    copyDense(bam, mha);
    const x = input(2, 7, 16);
    expect(maxDiff(bam.forward(x, ctx()), mha.forward(x, ctx()))).toBeLessThan(1e-5);
  });

  it('I6b: KV sharing with identical Q/O experts and the dense K/V equals the dense attention', () => {
    const mha = new MultiHeadAttention(16, { heads: 2 }, new Rng(4));
    const bam = build({ experts: 4, heads: 2, kv: 'shared', routerInit: { dist: 'normal', std: 1 } });
    copyDense(bam, mha);
    const x = input(2, 6, 16);
    expect(maxDiff(bam.forward(x, ctx()), mha.forward(x, ctx()))).toBeLessThan(1e-5);
  });

  it('I7: a zero router gives the uniform mean of the expert outputs, not attention with averaged weights', () => {
    const bam = build({ experts: 3, heads: 2, routerInit: { dist: 'normal', std: 0 } });
    const x = input(1, 8, 16);
    const mean = tf.div(tf.addN([0, 1, 2].map((j) => expertAsMHA(bam, j).forward(x, ctx()))), 3);
    expect(maxDiff(bam.forward(x, ctx()), mean)).toBeLessThan(1e-5);
    const avg = new MultiHeadAttention(16, { heads: 2 }, new Rng(1));
    for (const [lin, name] of [
      [avg.q, 'wq'],
      [avg.k, 'wk'],
      [avg.v, 'wv'],
      [avg.o, 'wo'],
    ] as const)
      lin.weight.assign(t(tf.div(tf.addN(bam.experts.map((e) => e.get(name))), 3)));
    expect(maxDiff(bam.forward(x, ctx()), avg.forward(x, ctx()))).toBeGreaterThan(1e-3);
  });

  it('soft weights sum to 1 per token; top-k keeps k (raw: the softmax values, renormalise: summing to 1)', () => {
    const x = input(2, 5, 16);
    const soft = build({ experts: 4, heads: 2, routerInit: { dist: 'normal', std: 1 } });
    const g = soft.weights(x).arraySync();
    for (const row of g) {
      expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      expect(row.every((p) => p > 0)).toBe(true);
    }
    for (const weighting of ['raw', 'renormalise'] as const) {
      const top = build({ experts: 4, heads: 2, routing: { type: 'topk', k: 2, weighting }, routerInit: { dist: 'normal', std: 1 } });
      const gt = top.weights(x).arraySync();
      gt.forEach((row, i) => {
        expect(row.filter((p) => p > 0)).toHaveLength(2);
        const kept = g[i]!.map((p, j) => (row[j]! > 0 ? p : 0));
        const s = kept.reduce((a, b) => a + b, 0);
        // Same router (same seed and path): the kept entries are the two largest of the soft weights.
        expect(Math.min(...kept.filter((p) => p > 0))).toBeGreaterThanOrEqual(Math.max(...g[i]!.filter((_, j) => row[j] === 0)));
        row.forEach((p, j) => {
          expect(p).toBeCloseTo(weighting === 'raw' ? kept[j]! : kept[j]! / s, 5);
        });
      });
    }
  });

  it('KV sharing equals the KV-experts path with the shared K/V copied into every expert; its K/V gradients are the sum over experts', () => {
    const shared = build({ experts: 3, heads: 2, kv: 'shared', routerInit: { dist: 'normal', std: 1 } });
    const full = build({ experts: 3, heads: 2, kv: 'experts' });
    full.router.get('weight').assign(shared.router.get('weight'));
    shared.experts.forEach((e, j) => {
      const f = full.experts[j]!;
      f.get('wq').assign(e.get('wq'));
      f.get('wo').assign(e.get('wo'));
      f.get('wk').assign(shared.sharedKv!.get('wk'));
      f.get('wv').assign(shared.sharedKv!.get('wv'));
    });
    const x = input(2, 6, 16);
    const R = input(2, 6, 16, 9);
    expect(maxDiff(shared.forward(x, ctx()), full.forward(x, ctx()))).toBeLessThan(1e-6);
    const gs = tf.variableGrads(() => tf.sum(tf.mul(shared.forward(x, ctx()), R)) as tf.Scalar, shared.trainableVariables()).grads;
    const gf = tf.variableGrads(() => tf.sum(tf.mul(full.forward(x, ctx()), R)) as tf.Scalar, full.trainableVariables()).grads;
    for (const name of ['wk', 'wv'] as const) {
      const sum = tf.addN(full.experts.map((e) => gf[e.get(name).name]!));
      const g = gs[shared.sharedKv!.get(name).name]!;
      expect(maxDiff(g, sum)).toBeLessThan(1e-4 * Math.max(1, tf.max(tf.abs(sum)).dataSync()[0]!));
    }
  });

  it('GQA: with kvHeads < heads, query head i of every expert reads KV head ⌊i/r⌋', () => {
    const bam = build({ experts: 2, heads: 4, kvHeads: 2, headDim: 4, routerInit: { dist: 'normal', std: 1 } });
    const x = input(1, 6, 16);
    const g = bam.weights(x);
    // Dense reference per expert: an MHA whose K/V weights repeat each KV head's columns r = 2 times.
    const outs = bam.experts.map((e) => {
      const m = new MultiHeadAttention(16, { heads: 4, headDim: 4 }, new Rng(1));
      const rep = (w: tf.Tensor) => tf.reshape(tf.tile(tf.reshape(w, [16, 2, 1, 4]), [1, 1, 2, 1]), [16, 16]);
      m.q.weight.assign(t(e.get('wq')));
      m.k.weight.assign(t(rep(e.get('wk'))));
      m.v.weight.assign(t(rep(e.get('wv'))));
      m.o.weight.assign(t(e.get('wo')));
      return m.forward(x, ctx());
    });
    const ref = tf.addN(outs.map((o, j) => tf.mul(o, tf.reshape(tf.slice(g, [0, j], [-1, 1]), [1, 6, 1]))));
    expect(maxDiff(bam.forward(x, ctx()), ref)).toBeLessThan(1e-5);
  });

  it('causality: changing token t+1 leaves every output at positions <= t unchanged', () => {
    for (const kv of ['experts', 'shared'] as const) {
      const bam = build({ experts: 2, heads: 2, kv, routerInit: { dist: 'normal', std: 1 } });
      const x = input(1, 8, 16);
      const a = bam.forward(x, ctx());
      const bumped = tf.concat([tf.slice(x, [0, 0, 0], [1, 5, 16]), tf.add(tf.slice(x, [0, 5, 0], [1, 3, 16]), 3)], 1);
      const b = bam.forward(bumped, ctx());
      expect(maxDiff(tf.slice(a, [0, 0, 0], [1, 5, 16]), tf.slice(b, [0, 0, 0], [1, 5, 16]))).toBeLessThan(1e-6);
      expect(maxDiff(tf.slice(a, [0, 5, 0], [1, 1, 16]), tf.slice(b, [0, 5, 0], [1, 1, 16]))).toBeGreaterThan(1e-3);
    }
  });

  it('finite-difference gradients (router included) for both KV variants, soft and top-k', () => {
    for (const spec of [{ kv: 'experts' }, { kv: 'shared', kvHeads: 1 }, { kv: 'experts', routing: { type: 'topk', k: 2, weighting: 'renormalise' } }]) {
      // Seed 6: the 2nd and 3rd largest soft weights of every token differ by > 0.06, so no top-2
      // selection flips within the finite-difference step (asserted below).
      const bam = build({ experts: 3, heads: 2, routerInit: { dist: 'normal', std: 0.5 }, ...spec }, 8, 6);
      const x = tf.variable(input(2, 5, 8));
      const gaps = bam
        .weights(x)
        .arraySync()
        .map((r) => [...r].sort((a, b) => b - a))
        .map((s) => s[1]! - s[2]!);
      expect(Math.min(...gaps)).toBeGreaterThan(0.05);
      const R = input(2, 5, 8, 8);
      const f = () => tf.sum(tf.mul(bam.forward(x, ctx()), R)) as tf.Scalar;
      const errs = directionalGradCheck(f, [x, ...bam.trainableVariables()], new Rng(2));
      for (const e of errs) expect(e).toBeLessThan(2e-2);
      const g = tf.variableGrads(f, [bam.router.get('weight')]).grads;
      expect(tf.max(tf.abs(Object.values(g)[0]!)).dataSync()[0]).toBeGreaterThan(1e-4);
    }
  });

  it('routing statistics: mean weight per expert and entropy of g, per call', () => {
    const bam = build({ experts: 4, heads: 2, routerInit: { dist: 'normal', std: 0 } });
    bam.assignPaths('transformer.layers.0.attention');
    const c = ctx();
    bam.forward(input(2, 3, 16), c);
    expect(c.routing).toHaveLength(1);
    const s = c.routing[0]!;
    expect(s.layer).toBe('transformer.layers.0.attention');
    expect(s.tokens).toBe(6);
    for (const l of s.load) expect(l).toBeCloseTo(0.25, 6);
    expect(s.entropy).toBeCloseTo(Math.log(4), 5);
  });

  it('bad input: one-line errors naming the JSON path', () => {
    expect(() => build({ heads: 3 }, 16)).toThrow('$.block.attention.heads: dModel 16 is not divisible by heads 3; set headDim');
    expect(() => build({ heads: 4, kvHeads: 3 }, 16)).toThrow('$.block.attention.kvHeads: heads 4 is not a multiple of kvHeads 3');
    expect(() => build({ experts: 2, routing: { type: 'topk', k: 3 } }, 16)).toThrow('$.block.attention.routing.k: k = 3 exceeds the number of experts (2)');
  });

  it('counters: parameters, active parameters and BAM Table 10 FLOPs', () => {
    const d = 16;
    const bam = build({ experts: 3, heads: 2, headDim: 8, kvHeads: 1 }, d);
    // router N d; per expert wq d·H·dh + wk, wv d·Hkv·dh + wo H·dh·d
    const perExpert = d * 16 + 2 * d * 8 + 16 * d;
    expect(bam.parameterCount()).toBe(3 * d + 3 * perExpert);
    expect(bam.activeParameterCount()).toBe(3 * d + 3 * perExpert);
    expect(bam.flopsPerToken(32)).toBe(2 * 3 * d + 3 * (2 * perExpert + 2 * 32 * 16));
    const shared = build({ experts: 3, heads: 2, kv: 'shared' }, d);
    expect(shared.parameterCount()).toBe(3 * d + 3 * 2 * d * d + 2 * d * d);
    const top = build({ experts: 4, heads: 2, routing: { type: 'topk', k: 1 } }, d);
    expect(top.activeParameterCount()).toBe(4 * d + 4 * d * d);
  });

  it('BAM Table 7 / Table 10 at d 1024, n_ctx 256, 4 experts: attention 35,651,584 FLOPs per token and layer plus the router 2 n_e d', () => {
    const bam = build({ experts: 4, heads: 16 }, 1024);
    expect(bam.flopsPerToken(256)).toBe(35_651_584 + 2 * 4 * 1024);
    // BTX's dense attention in the same table: 8 d² + 2 n_ctx d = 8,912,896.
    const mha = new MultiHeadAttention(1024, { heads: 16 }, new Rng(0));
    expect(mha.flopsPerToken(256)).toBe(8_912_896);
    bam.dispose();
    mha.dispose();
  });
});
