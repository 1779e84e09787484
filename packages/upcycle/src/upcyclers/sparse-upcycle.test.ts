import { buildModel, loadState, MoelabError, Trainer } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { denseSpec, maxAbs, maxAbsDiff, registry, run, source, tokens } from '../../test/helpers.js';
import { formatProvenance, provenanceRows, upcycle } from '../index.js';

describe('sparse-upcycle', () => {
  const seed = source('seed', denseSpec({ layers: 2 }), 3);
  const dense = run(seed.spec, seed.weights);

  it('I1: renormalised top-2 over identical copies computes the dense model exactly at step 0', () => {
    const r = upcycle(registry(), { type: 'sparse-upcycle', experts: 4, layers: 'all' }, { seed });
    const moe = run(r.spec, r.weights);
    expect(maxAbsDiff(moe.logits, dense.logits)).toBeLessThan(1e-5 * maxAbs(dense.logits));
    expect(Math.abs(moe.loss - dense.loss)).toBeLessThan(1e-4);
    expect(r.report.totalParams).toBeGreaterThan(r.report.activeParams);
  });

  it('I2: raw top-2 weights (sparse-upcycle-t5) scale the FFN by Σp < 1, so the output moves', () => {
    const r = upcycle(registry(), { type: 'sparse-upcycle-t5', experts: 4, layers: 'all' }, { seed });
    const moe = run(r.spec, r.weights);
    expect(maxAbsDiff(moe.logits, dense.logits)).toBeGreaterThan(1e-3);
    expect(moe.loss).not.toBeCloseTo(dense.loss, 4);
  });

  it('every-other converts the 0-based odd layers only; copies are bit-exact; the router is new and N(0, 0.02²)', () => {
    const r = upcycle(registry(), { type: 'sparse-upcycle', experts: 3 }, { seed });
    const blocks = (r.spec as unknown as { blocks: { ffn: { type: string; expertNames?: string[] } }[] }).blocks;
    expect(blocks.map((b) => b.ffn.type)).toEqual(['dense', 'moe']);
    expect(blocks[1]!.ffn.expertNames).toEqual(['seed#0', 'seed#1', 'seed#2']);
    const rows = provenanceRows(r);
    expect(rows.length).toBe(r.weights.size);
    for (const row of rows) {
      if (row.op !== 'copy') continue;
      const src = seed.weights.get(row.from[0]!.slice('seed:'.length))!;
      expect(Array.from(r.weights.get(row.tensor)!.data)).toEqual(Array.from(src.data));
    }
    const router = r.weights.get('transformer.layers.1.ffn.router.weight')!;
    expect(router.shape).toEqual([3, 16]);
    expect(r.provenance.get('transformer.layers.1.ffn.router.weight')!.op).toBe('new');
    const std = Math.sqrt(router.data.reduce((s, v) => s + v * v, 0) / router.data.length);
    expect(std).toBeGreaterThan(0.01);
    expect(std).toBeLessThan(0.03);
    // expert e of the stacked w1 [E, d, h] is the dense w1.weight [h, d] transposed
    const w1 = r.weights.get('transformer.layers.1.ffn.experts.w1')!;
    const dw1 = seed.weights.get('transformer.layers.1.ffn.w1.weight')!;
    expect(w1.shape).toEqual([3, 16, 32]);
    expect(w1.data[2 * 16 * 32 + 5 * 32 + 7]).toBe(dw1.data[7 * 16 + 5]);
    expect(r.weights.has('transformer.layers.0.ffn.w1.weight')).toBe(true);
    const table = formatProvenance(r);
    expect(table).toMatch(/transformer\.layers\.\*\.ffn\.experts\.w1 +\[3,16,32\] +stack +seed:transformer\.layers\.\*\.ffn\.w1\.weight \(×3\)/);
    expect(table).toMatch(/transformer\.layers\.\*\.ffn\.router\.weight +\[3,16\] +new +- +softmax-topk router, N\(0, 0\.02²\)/);
    expect(formatProvenance(r, { group: false })).toMatch(/transformer\.layers\.0\.ffn\.w1\.weight +\[32,16\] +copy/);
  });

  it('gaussian noise breaks the exact equality; the step-0 change is reported in the notes', () => {
    const r = upcycle(registry(), { type: 'sparse-upcycle', experts: 2, layers: 'all', expertNoise: { kind: 'gaussian', alpha: 0.05 } }, { seed });
    expect(maxAbsDiff(run(r.spec, r.weights).logits, dense.logits)).toBeGreaterThan(1e-6);
    expect(r.report.notes.join(' ')).toMatch(/gaussian noise/);
    const d = upcycle(registry(), { type: 'sparse-upcycle', experts: 2, layers: 'all', expertNoise: { kind: 'drop-upcycle', rate: 0.25 } }, { seed });
    const w1 = d.weights.get('transformer.layers.0.ffn.experts.w1')!;
    const dw1 = seed.weights.get('transformer.layers.0.ffn.w1.weight')!;
    // 25% of the 32 neurons re-drawn per expert: 8 columns of w1 differ from the dense ones
    let changed = 0;
    for (let j = 0; j < 32; j++) if (w1.data[0 * 32 + j] !== dw1.data[j * 16 + 0]) changed++;
    expect(changed).toBe(8);
  });

  it('carries the Adam moments over: copies keep theirs, experts get copies, the router zeros, the step is restored', () => {
    const reg = registry();
    const m = buildModel(seed.spec, reg, 0);
    loadState(m, seed.weights);
    const data = { batch: () => tokens(2, 8, 5) };
    const trainer = new Trainer(m, data, { batchSize: 2, seqLen: 8, steps: 2, warmup: 0 });
    trainer.trainStep();
    trainer.trainStep();
    const optimizer = trainer.optimizer.stateTensors() as Map<string, { shape: number[]; data: Float32Array }>;
    const weights = new Map(m.stateDict().map(([n, v]) => [n, { shape: v.shape.slice(), data: Float32Array.from(v.dataSync()) }]));
    m.dispose();
    const trained = { ...seed, weights, optimizer };
    const r = upcycle(reg, { type: 'sparse-upcycle', experts: 2, layers: 'all', resumeOptimizerState: true }, { seed: trained });
    expect(r.step).toBe(2);
    const o = r.optimizer!;
    expect(Array.from(o.get('exp_avg.embedding.weight')!.data)).toEqual(Array.from(optimizer.get('exp_avg.embedding.weight')!.data));
    const mv = o.get('exp_avg_sq.transformer.layers.0.ffn.experts.w2')!;
    const dv = optimizer.get('exp_avg_sq.transformer.layers.0.ffn.w2.weight')!; // [d, h]
    expect(mv.shape).toEqual([2, 32, 16]);
    expect(mv.data[32 * 16 + 3 * 16 + 4]).toBe(dv.data[4 * 32 + 3]);
    expect(maxAbs(o.get('exp_avg.transformer.layers.0.ffn.router.weight')!.data)).toBe(0);
    // The new model's trainer accepts the carried state.
    const up = buildModel(r.spec, reg, 0);
    loadState(up, r.weights);
    const t2 = new Trainer(up, data, { batchSize: 2, seqLen: 8, steps: 3, warmup: 0 });
    t2.optimizer.loadState(o);
    expect(t2.step).toBe(2);
    expect(Number.isFinite(t2.trainStep().loss)).toBe(true);
    up.dispose();
  });

  it('bad input: unknown method with a close name, experts given, an MoE source, a 1-layer every-other', () => {
    const reg = registry();
    expect(() => upcycle(reg, 'sparse-upcycel', { seed })).toThrow(/unknown upcycler "sparse-upcycel"\. Did you mean: sparse-upcycle/);
    expect(() => upcycle(reg, 'sparse-upcycle', { seed, experts: [seed] })).toThrow(MoelabError);
    const one = source('one', denseSpec({ layers: 1 }));
    expect(() => upcycle(reg, 'sparse-upcycle', { seed: one })).toThrow(/every-other.*1 layer/);
    const moe = upcycle(reg, { type: 'sparse-upcycle', experts: 2, layers: 'all' }, { seed });
    expect(() => upcycle(reg, { type: 'sparse-upcycle', layers: 'all' }, { seed: { name: 'moe', spec: moe.spec, weights: moe.weights } })).toThrow(
      /layer 0's FFN is "moe"/,
    );
    expect(() => upcycle(reg, { type: 'sparse-upcycle', experts: 0 }, { seed })).toThrow(/upcycler\.experts/);
    expect(() => upcycle(reg, { type: 'sparse-upcycle', layers: [5] }, { seed })).toThrow(/layer 5 is out of range/);
  });
});
