import { buildModel, forwardContext, loadState, type MoELayer, Rng, setWarningHandler, tf, type TransformerLM } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { branched, denseSpec, maxAbs, maxAbsDiff, registry, run, source, tokens } from '../../test/helpers.js';
import { type UpcycleSource, upcycle, type WeightMap } from '../index.js';

const copyOf = (s: UpcycleSource, name: string): UpcycleSource => ({ ...s, name });
setWarningHandler(() => {});
const seed = source('seed', denseSpec({ layers: 2 }), 4);
const unit = (m: number, i: number) => Float32Array.from({ length: m }, (_, j) => (j === i ? 1 : 0.1));
const provided = (n: number, m = 16) => Array.from({ length: n }, (_, i) => unit(m, i));

/** The built model of spec + weights. */
function model(spec: unknown, weights: WeightMap) {
  const m = buildModel<TransformerLM>(spec as never, registry(), 0);
  loadState(m, weights);
  return m;
}

describe('nexus', () => {
  it('I10b: from identical copies the MoE layer computes (1 + s_top) · FFN(x) — never the seed exactly', () => {
    const r = upcycle(registry(), 'nexus', { seed, experts: ['a', 'b', 'c'].map((n) => copyOf(seed, n)), domainEmbeddings: provided(3) });
    const up = model(r.spec, r.weights);
    const dense = model(seed.spec, seed.weights);
    // A stronger projection so that s_top clearly differs from token to token.
    const router = (up.layers[0]!.ffn as MoELayer).router as unknown as { proj2: tf.Variable };
    router.proj2.assign(tf.randomNormal(router.proj2.shape, 0, 0.3, 'float32', 1));
    const x = tf.randomNormal([9, 16], 0, 1, 'float32', 2) as tf.Tensor2D;
    const ctx = forwardContext(new Rng(0), false);
    const y = (up.layers[0]!.ffn as MoELayer).forward(x, ctx).arraySync() as number[][];
    const f = dense.layers[0]!.ffn.forward(x, ctx).arraySync() as number[][];
    const { weight } = (up.layers[0]!.ffn as MoELayer).router.route(x, ctx);
    const s = weight!.dataSync();
    for (let t = 0; t < 9; t++) for (let c = 0; c < 16; c++) expect(y[t]![c]).toBeCloseTo((1 + s[t]!) * f[t]![c]!, 5);
    expect(Math.max(...s) - Math.min(...s)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(run(r.spec, r.weights).logits, run(seed.spec, seed.weights).logits)).toBeGreaterThan(1e-3);
    up.dispose();
    dense.dispose();
  });

  it('I10a: permuting the domains together with their experts and embeddings leaves the outputs unchanged', () => {
    const experts = [branched(seed, 'a', 1), branched(seed, 'b', 2), branched(seed, 'c', 3)];
    const D = provided(3);
    const r1 = upcycle(registry(), 'nexus', { seed, experts, domainEmbeddings: D });
    const r2 = upcycle(registry(), 'nexus', { seed, experts: [experts[2]!, experts[0]!, experts[1]!], domainEmbeddings: [D[2]!, D[0]!, D[1]!] });
    const a = run(r1.spec, r1.weights).logits;
    expect(maxAbsDiff(run(r2.spec, r2.weights).logits, a)).toBeLessThan(1e-5 * maxAbs(a));
  });

  it('shared expert = the seed FFN, routed experts = the domain models, non-FFN tensors averaged over the domains only', () => {
    const experts = [branched(seed, 'kjv', 1), branched(seed, 'jargon', 2)];
    const r = upcycle(registry(), 'nexus', { seed, experts, domainEmbeddings: provided(2) });
    const ffn = (r.spec as unknown as { block: { ffn: Record<string, unknown> } }).block.ffn;
    expect(ffn).toMatchObject({
      type: 'moe',
      experts: 2,
      expertNames: ['kjv', 'jargon'],
      router: { type: 'nexus-projection', k: 1, embeddingDim: 16, balanceCoef: 0.05 },
    });
    expect(ffn.shared).toEqual({ type: 'mlp', hidden: 32, activation: 'silu', glu: true });
    const shared = r.weights.get('transformer.layers.1.ffn.shared.w3')!;
    expect(shared.shape).toEqual([1, 16, 32]);
    expect(shared.data[5 * 32 + 2]).toBe(seed.weights.get('transformer.layers.1.ffn.w3.weight')!.data[2 * 16 + 5]);
    expect(r.provenance.get('out_norm.weight')!.from).toEqual(['kjv:out_norm.weight', 'jargon:out_norm.weight']);
    expect(Array.from(r.weights.get('transformer.layers.0.ffn.router.domain_embeddings')!.data.slice(0, 3))).toEqual([1, 0.1, 0.1].map(Math.fround));
    expect(r.provenance.get('transformer.layers.0.ffn.router.proj1')!.op).toBe('new');
  });

  it('computes domain embeddings from samples: seed-mean (unit length, m = d) and hashed n-grams (deterministic, m = buckets)', () => {
    const experts = [branched(seed, 'a', 1), branched(seed, 'b', 2)];
    const samples = [[tokens(1, 10, 1), tokens(1, 10, 2)], [Int32Array.from({ length: 11 }, (_, i) => 97 + (i % 3))]];
    const r = upcycle(registry(), 'nexus', { seed, experts, domainSamples: samples });
    const D = r.weights.get('transformer.layers.0.ffn.router.domain_embeddings')!;
    expect(D.shape).toEqual([2, 16]);
    const norm = Math.hypot(...D.data.slice(0, 16));
    expect(norm).toBeCloseTo(1, 5);
    expect(maxAbsDiff(D.data.slice(0, 16), D.data.slice(16))).toBeGreaterThan(1e-3);
    const h1 = upcycle(registry(), { type: 'nexus', embedder: 'hashed-ngrams', buckets: 64 }, { seed, experts, domainSamples: samples });
    const h2 = upcycle(registry(), { type: 'nexus', embedder: 'hashed-ngrams', buckets: 64 }, { seed, experts, domainSamples: samples });
    const e = h1.weights.get('transformer.layers.1.ffn.router.domain_embeddings')!;
    expect(e.shape).toEqual([2, 64]);
    expect(Array.from(e.data)).toEqual(Array.from(h2.weights.get('transformer.layers.1.ffn.router.domain_embeddings')!.data));
    expect(() => upcycle(registry(), 'nexus', { seed, experts })).toThrow(/nexus needs domain embeddings/);
    expect(() => upcycle(registry(), 'nexus', { seed, experts, domainEmbeddings: [unit(16, 0), unit(8, 1)] })).toThrow(/embedding 1 has length 8/);
  });

  it('nexus-linear: the same merge with a linear top-1 raw router', () => {
    const r = upcycle(registry(), 'nexus-linear', { seed, experts: [branched(seed, 'a', 1), branched(seed, 'b', 2)] });
    const ffn = (r.spec as unknown as { block: { ffn: { router: Record<string, unknown> } } }).block.ffn;
    expect(ffn.router).toEqual({ type: 'softmax-topk', k: 1, renormalize: false, balanceCoef: 0.05, zLossCoef: 0, initStd: 0.02 });
  });
});

describe('nexus-extend', () => {
  const a = branched(seed, 'a', 1);
  const b = branched(seed, 'b', 2);
  const c = branched(seed, 'c', 3);
  const merged = upcycle(registry(), 'nexus', { seed, experts: [a, b], domainEmbeddings: provided(2) });
  const base: UpcycleSource = { name: 'moe', spec: merged.spec, weights: merged.weights };

  it('appends the new FFN and domain embedding, keeps the trained projection and shared expert; λ = 1/(n+1) gives the mean over n+1 models (I10d)', () => {
    const r = upcycle(registry(), 'nexus-extend', { base, experts: [c], domainEmbeddings: [unit(16, 2)] });
    const ffn = (r.spec as unknown as { block: { ffn: { experts: number; expertNames: string[] } } }).block.ffn;
    expect(ffn.experts).toBe(3);
    expect(ffn.expertNames).toEqual(['a', 'b', 'c']);
    const D = r.weights.get('transformer.layers.0.ffn.router.domain_embeddings')!;
    expect(D.shape).toEqual([3, 16]);
    expect(Array.from(D.data.slice(32))).toEqual(Array.from(unit(16, 2)));
    expect(Array.from(r.weights.get('transformer.layers.1.ffn.router.proj1')!.data)).toEqual(
      Array.from(base.weights.get('transformer.layers.1.ffn.router.proj1')!.data),
    );
    expect(Array.from(r.weights.get('transformer.layers.1.ffn.shared.w1')!.data)).toEqual(
      Array.from(base.weights.get('transformer.layers.1.ffn.shared.w1')!.data),
    );
    const w2 = r.weights.get('transformer.layers.0.ffn.experts.w2')!;
    expect(w2.shape).toEqual([3, 32, 16]);
    expect(w2.data[2 * 32 * 16 + 4 * 16 + 1]).toBe(c.weights.get('transformer.layers.0.ffn.w2.weight')!.data[1 * 32 + 4]);
    const q = r.weights.get('transformer.layers.1.attention.v_proj.weight')!.data;
    const mean = [a, b, c].map((s) => s.weights.get('transformer.layers.1.attention.v_proj.weight')!.data);
    for (const j of [0, 17, 255]) expect(q[j]).toBeCloseTo((mean[0]![j]! + mean[1]![j]! + mean[2]![j]!) / 3, 6);
    expect(r.provenance.get('embedding.weight')).toMatchObject({ op: 'weighted-average', from: ['moe:embedding.weight', 'c:embedding.weight'] });
    // The extended model runs.
    expect(Number.isFinite(run(r.spec, r.weights).loss)).toBe(true);
  });

  it('a linear-router base gets its router re-initialised (it cannot place a new expert); bad input is named', () => {
    const lin = upcycle(registry(), 'nexus-linear', { seed, experts: [a, b] });
    const r = upcycle(registry(), 'nexus-extend', { base: { name: 'lin', spec: lin.spec, weights: lin.weights }, experts: [c] });
    expect(r.weights.get('transformer.layers.0.ffn.router.weight')!.shape).toEqual([3, 16]);
    expect(r.provenance.get('transformer.layers.0.ffn.router.weight')).toMatchObject({ op: 'new' });
    expect(() => upcycle(registry(), 'nexus-extend', { base, experts: [c] })).toThrow(/nexus-extend needs domain embeddings/);
    expect(() => upcycle(registry(), 'nexus-extend', { base: seed, experts: [c] })).toThrow(/layer 0's FFN is "dense", not an MoE to extend/);
    const wide = source('wide', denseSpec({ layers: 2, d: 32 }), 1);
    expect(() => upcycle(registry(), 'nexus-extend', { base, experts: [wide], domainEmbeddings: [unit(16, 0)] })).toThrow(/does not match the base MoE/);
    expect(() => upcycle(registry(), 'nexus-extend', { base, experts: [c], domainEmbeddings: [unit(8, 0)] })).toThrow(/length 8, the base's have 16/);
  });
});

describe('nexus domain-embedding centring', () => {
  const a = branched(seed, 'a', 1);
  const b = branched(seed, 'b', 2);
  const c = branched(seed, 'c', 3);
  // three nearly collinear raw embeddings (cosines ≈ 0.98), as raw domain means of a small model are
  const raw = [0, 1, 2].map((i) => Float32Array.from({ length: 16 }, (_, j) => 1 + (j === i ? 0.3 : 0)));
  const cos = (u: Float32Array, v: Float32Array) => u.reduce((s, x, j) => s + x * v[j]!, 0) / (Math.hypot(...u) * Math.hypot(...v));

  it('center: D_i = (d_i − μ̄)/‖d_i − μ̄‖ with μ̄ the mean of the raw embeddings, kept in the router spec; nexus-extend centres the new domain with it', () => {
    const r = upcycle(registry(), { type: 'nexus', center: true }, { seed, experts: [a, b, c], domainEmbeddings: raw });
    const router = (r.spec as unknown as { block: { ffn: { router: { domainCentre: number[] } } } }).block.ffn.router;
    const mu = Array.from({ length: 16 }, (_, j) => (raw[0]![j]! + raw[1]![j]! + raw[2]![j]!) / 3);
    expect(router.domainCentre.length).toBe(16);
    expect(maxAbsDiff(router.domainCentre, mu)).toBeLessThan(1e-6);
    const D = r.weights.get('transformer.layers.1.ffn.router.domain_embeddings')!;
    const row = (i: number) => D.data.slice(i * 16, (i + 1) * 16);
    for (let i = 0; i < 3; i++) {
      const want = Array.from(raw[i]!, (x, j) => x - mu[j]!);
      const n = Math.hypot(...want);
      expect(
        maxAbsDiff(
          row(i),
          want.map((x) => x / n),
        ),
      ).toBeLessThan(1e-6);
    }
    expect(cos(raw[0]!, raw[1]!)).toBeGreaterThan(0.97);
    expect(cos(row(0), row(1))).toBeCloseTo(-0.5, 5); // three centred points: 120° apart
    expect(r.report.notes.join(' ')).toMatch(/provided, centred/);
    const plain = upcycle(registry(), 'nexus', { seed, experts: [a, b, c], domainEmbeddings: raw });
    expect((plain.spec as unknown as { block: { ffn: { router: Record<string, unknown> } } }).block.ffn.router.domainCentre).toBeUndefined();

    const base: UpcycleSource = { name: 'moe', spec: r.spec, weights: r.weights };
    const fresh = Float32Array.from({ length: 16 }, (_, j) => 1 + (j === 5 ? 0.3 : 0));
    const x = upcycle(registry(), 'nexus-extend', { base, experts: [branched(seed, 'd', 4)], domainEmbeddings: [fresh] });
    const D2 = x.weights.get('transformer.layers.0.ffn.router.domain_embeddings')!;
    expect(Array.from(D2.data.slice(0, 48))).toEqual(Array.from(r.weights.get('transformer.layers.0.ffn.router.domain_embeddings')!.data));
    const want = Array.from(fresh, (v, j) => v - mu[j]!);
    const n = Math.hypot(...want);
    expect(
      maxAbsDiff(
        D2.data.slice(48),
        want.map((v) => v / n),
      ),
    ).toBeLessThan(1e-5);
    expect(x.provenance.get('transformer.layers.0.ffn.router.domain_embeddings')!.note).toMatch(/centred by the stored domainCentre/);
    expect(() => upcycle(registry(), { type: 'nexus', center: true }, { seed, experts: [a], domainEmbeddings: [raw[0]!] })).toThrow(
      /^upcycler\.center: centring one domain embedding leaves nothing/,
    );
  });
});
