import { buildModel, modelSummary, setWarningHandler } from '@moelab/core';
import { afterEach, describe, expect, it } from 'vitest';
import { branched, denseSpec, maxAbs, maxAbsDiff, registry, run, source } from '../../test/helpers.js';
import { type UpcycleSource, upcycle } from '../index.js';

const copyOf = (s: UpcycleSource, name: string): UpcycleSource => ({ ...s, name });
const warnings: string[] = [];
const previous = setWarningHandler((m) => warnings.push(m));
afterEach(() => {
  warnings.length = 0;
});
process.on('exit', () => setWarningHandler(previous));

describe('btx', () => {
  const seed = source('seed', denseSpec({ layers: 2 }), 3);
  const dense = run(seed.spec, seed.weights);
  const experts = [branched(seed, 'kjv', 11), branched(seed, 'jargon', 12), branched(seed, 'devil', 13)];

  it('I1 + I13: built from identical copies of the seed, the merge computes the seed exactly at step 0', () => {
    const r = upcycle(registry(), 'btx', { seed, experts: ['a', 'b', 'c'].map((n) => copyOf(seed, n)) });
    const moe = run(r.spec, r.weights);
    expect(maxAbsDiff(moe.logits, dense.logits)).toBeLessThan(1e-5 * maxAbs(dense.logits));
    expect(warnings).toEqual([]);
    // the paper's mean-gate balance loss changes training only: the step-0 function is the same
    const router = { type: 'softmax-topk', k: 2, renormalize: true, balanceCoef: 0.01, balanceUsage: 'gates', zLossCoef: 0 };
    const g = upcycle(registry(), { type: 'btx', router }, { seed, experts: ['a', 'b', 'c'].map((n) => copyOf(seed, n)) });
    expect((g.spec as unknown as { block: { ffn: { router: unknown } } }).block.ffn.router).toMatchObject({ balanceUsage: 'gates' });
    expect(maxAbsDiff(run(g.spec, g.weights).logits, dense.logits)).toBeLessThan(1e-5 * maxAbs(dense.logits));
  });

  it('experts are the sources’ FFNs in order (seed first), everything else the uniform average; names and provenance say so', () => {
    const r = upcycle(registry(), 'btx', { seed, experts });
    const ffn = (r.spec as unknown as { block: { ffn: { experts: number; expertNames: string[]; router: { k: number; renormalize: boolean } } } }).block.ffn;
    expect(ffn.experts).toBe(4);
    expect(ffn.expertNames).toEqual(['seed', 'kjv', 'jargon', 'devil']);
    expect(ffn.router).toMatchObject({ type: 'softmax-topk', k: 2, renormalize: true, initStd: 0.02 });
    const w2 = r.weights.get('transformer.layers.1.ffn.experts.w2')!; // [4, h, d]
    const jargonW2 = experts[1]!.weights.get('transformer.layers.1.ffn.w2.weight')!; // [d, h]
    expect(w2.data[2 * 32 * 16 + 5 * 16 + 3]).toBe(jargonW2.data[3 * 32 + 5]);
    const q = r.weights.get('transformer.layers.0.attention.q_proj.weight')!;
    const all = [seed, ...experts].map((s) => s.weights.get('transformer.layers.0.attention.q_proj.weight')!.data[7]!);
    expect(q.data[7]).toBeCloseTo(all.reduce((a, b) => a + b) / 4, 6);
    expect(r.provenance.get('embedding.weight')).toEqual({
      op: 'average',
      from: ['seed:embedding.weight', 'kjv:embedding.weight', 'jargon:embedding.weight', 'devil:embedding.weight'],
    });
    expect(r.provenance.get('transformer.layers.1.ffn.experts.w1')!.from).toEqual(
      ['seed', 'kjv', 'jargon', 'devil'].map((n) => `${n}:transformer.layers.1.ffn.w1.weight`),
    );
    expect(warnings).toEqual([]);
  });

  it('warns (does not stop) when the averaged sources are unrelated; split cuts each FFN into chunks', () => {
    const stranger = source('stranger', denseSpec({ layers: 2 }), 99);
    const r = upcycle(registry(), { type: 'btx', split: 2, router: { type: 'softmax-topk', k: 2 } }, { seed, experts: [stranger] });
    expect(warnings.join('\n')).toMatch(/\(seed, stranger\) differ by [\d.]+ relative L2 on average \(> 0\.5\): they do not look branched from one seed/);
    expect(r.report.warnings).toHaveLength(1);
    const ffn = (r.spec as unknown as { block: { ffn: { experts: number; expertNames: string[]; expert: { hidden: number } } } }).block.ffn;
    expect(ffn.experts).toBe(4);
    expect(ffn.expert.hidden).toBe(16);
    expect(ffn.expertNames).toEqual(['seed/0', 'seed/1', 'stranger/0', 'stranger/1']);
  });

  it('bad input: no experts, mismatched architectures, duplicate names, k above the number of experts', () => {
    const reg = registry();
    expect(() => upcycle(reg, 'btx', { seed })).toThrow(/btx merges dense models branched from a seed/);
    const wide = source('wide', denseSpec({ layers: 2, hidden: 48 }), 1);
    expect(() => upcycle(reg, 'btx', { seed, experts: [wide] })).toThrow(/experts\[0\] \(wide\): architecture differs from seed \(seed\)/);
    expect(() => upcycle(reg, 'btx', { seed, experts: [copyOf(seed, 'seed')] })).toThrow(/two sources are called "seed"/);
    expect(() => upcycle(reg, { type: 'btx', router: { type: 'softmax-topk', k: 3 } }, { seed, experts: [experts[0]!] })).toThrow(
      /k = 3 exceeds the 2 experts/,
    );
  });
});

describe('bam and bam-kvshare', () => {
  const seed = source('seed', denseSpec({ layers: 2 }), 5);
  const dense = run(seed.spec, seed.weights);
  const copies = ['a', 'b', 'c'].map((n) => copyOf(seed, n));
  const renormalisedAll = { type: 'softmax-topk', k: 4, renormalize: true };

  it('I6 / I6b: from identical copies with weights summing to 1 the mixture equals the dense model (KV experts and KV sharing)', () => {
    for (const method of ['bam', 'bam-kvshare']) {
      const r = upcycle(registry(), { type: method, ffnRouter: renormalisedAll }, { seed, experts: copies });
      expect(maxAbsDiff(run(r.spec, r.weights).logits, dense.logits), method).toBeLessThan(1e-5 * maxAbs(dense.logits));
    }
  });

  it('I9b: with the paper’s raw top-1 FFN gate the FFN is scaled by p_top ≈ 1/N, so the step-0 loss differs from the seed’s', () => {
    const r = upcycle(registry(), 'bam', { seed, experts: copies });
    const ffn = (r.spec as unknown as { block: { ffn: { router: Record<string, unknown> } } }).block.ffn;
    expect(ffn.router).toMatchObject({ type: 'softmax-topk', k: 1, renormalize: false, balanceCoef: 0.01, zLossCoef: 0.001 });
    expect(maxAbsDiff(run(r.spec, r.weights).logits, dense.logits)).toBeGreaterThan(1e-3);
    expect(r.report.notes.join(' ')).toMatch(/raw top-1 probability/);
  });

  it('attention experts are the sources’ projections transposed; shared K/V are their average', () => {
    const experts = [branched(seed, 'x', 1), branched(seed, 'y', 2)];
    const r = upcycle(registry(), 'bam-kvshare', { seed, experts });
    const wq = r.weights.get('transformer.layers.0.attention.experts.2.wq')!; // [d, H·dh]
    const q = experts[1]!.weights.get('transformer.layers.0.attention.q_proj.weight')!; // [H·dh, d]
    expect(wq.data[3 * 16 + 9]).toBe(q.data[9 * 16 + 3]);
    const wk = r.weights.get('transformer.layers.1.attention.shared_kv.wk')!;
    const ks = [seed, ...experts].map((s) => s.weights.get('transformer.layers.1.attention.k_proj.weight')!.data[2 * 16 + 4]!);
    expect(wk.data[4 * 16 + 2]).toBeCloseTo(ks.reduce((a, b) => a + b) / 3, 6);
    expect(r.provenance.get('transformer.layers.1.attention.shared_kv.wk')!.op).toBe('average');
    expect(r.provenance.get('transformer.layers.1.attention.router.weight')!.op).toBe('new');
    expect(r.weights.has('transformer.layers.1.attention.experts.0.wk')).toBe(false);
  });

  it('refuses sequential blocks with the layer named', () => {
    const seq = source('seq', denseSpec({ layout: 'sequential' }), 1);
    expect(() => upcycle(registry(), 'bam', { seed: seq, experts: [copyOf(seq, 'b')] })).toThrow(/parallel blocks.*layer 0 is "sequential"/);
  });
});

describe('parameter and FLOP counters', () => {
  // The toy scenario model: byte vocabulary, d 64, 3 parallel blocks, 2 heads, SwiGLU 128, context 64, RMSNorm, learned positions.
  const toy = () => {
    const s = denseSpec({ layers: 3, d: 64, hidden: 128, heads: 2 });
    return { ...s, contextLength: 64 };
  };
  const seed = source('seed', toy(), 0);
  const experts = ['kjv', 'jargon', 'devil'].map((n) => copyOf(seed, n));

  it('forward FLOPs per token match the toy scenario: dense 0.909M, BTX 1.352M, BAM 2.015M per training token (plus the routers)', () => {
    const reg = registry();
    const flops = (spec: unknown) => {
      const m = buildModel(spec as never, reg, 0);
      const f = modelSummary(m).forwardFlopsPerToken;
      m.dispose();
      return f;
    };
    expect(3 * flops(seed.spec)).toBe(909_312);
    // The scenario's counter leaves routers out; ours counts 2·E·d FLOPs per router per token.
    const router = 2 * 4 * 64;
    const btx = upcycle(reg, 'btx', { seed, experts });
    expect(3 * btx.report.forwardFlopsPerToken).toBe(1_351_680 + 3 * 3 * router);
    const bam = upcycle(reg, 'bam', { seed, experts });
    expect(3 * bam.report.forwardFlopsPerToken).toBe(2_015_232 + 3 * 3 * 2 * router);
    expect(btx.report.source!.forwardFlopsPerToken).toBe(909_312 / 3);
  });

  it('BAM Table 9: total parameters of dense / BAM / BAM KV-sharing / BTX top-1 at the 590M configuration', () => {
    const reg = registry();
    // What the upcyclers emit at toy scale, instantiated at d 1024, 6 layers, 8 heads, SwiGLU 2048, vocab 256000, untied.
    const bamSpec = upcycle(reg, 'bam', { seed, experts }).spec;
    const kvSpec = upcycle(reg, 'bam-kvshare', { seed, experts }).spec;
    const btxSpec = upcycle(reg, { type: 'btx', router: { type: 'softmax-topk', k: 1, renormalize: false } }, { seed, experts }).spec;
    const scale = (spec: Record<string, unknown>) => {
      const s = structuredClone(spec) as {
        dModel: number;
        vocabSize: number;
        contextLength: number;
        stack: { groupSize: number };
        positionEmbedding?: string;
        block: Record<string, { hidden?: number; heads?: number; expert?: { hidden: number } }>;
      };
      s.dModel = 1024;
      s.vocabSize = 256_000;
      s.stack.groupSize = 6;
      s.positionEmbedding = 'none';
      s.block.attention!.heads = 8;
      if (s.block.ffn!.expert) s.block.ffn!.expert.hidden = 2048;
      else s.block.ffn!.hidden = 2048;
      return s;
    };
    const count = (spec: Record<string, unknown>) => {
      try {
        buildModel(scale(spec) as never, reg, 0, { maxParameters: 1 });
      } catch (e) {
        return Number(/the model has ([\d,]+) parameters/.exec((e as Error).message)![1]!.replace(/,/g, ''));
      }
      throw new Error('expected the planning build to refuse');
    };
    expect(count(seed.spec as Record<string, unknown>)).toBe(587_209_728);
    expect(count(bamSpec)).toBe(776_002_560);
    expect(count(kvSpec)).toBe(738_253_824);
    expect(count(btxSpec)).toBe(700_480_512);
  });

  it('active parameters per token: BAM = all attention experts + one FFN expert + both routers; BTX top-2 = two FFN experts', () => {
    const reg = registry();
    const d = 64;
    const h = 128;
    const V = 256;
    const embed = 2 * V * d + 64 * d; // embedding, head, positions
    const norms = 3 * d + d;
    const attn = 4 * d * d;
    const ffn = 3 * d * h;
    const bam = upcycle(reg, 'bam', { seed, experts });
    expect(bam.report.activeParams).toBe(embed + norms + 3 * (4 * attn + ffn + 2 * 4 * d));
    const btx = upcycle(reg, 'btx', { seed, experts });
    expect(btx.report.activeParams).toBe(embed + norms + 3 * (attn + 2 * ffn + 4 * d));
    expect(btx.report.totalParams).toBe(embed + norms + 3 * (attn + 4 * ffn + 4 * d));
    expect(bam.report.ms).toBeGreaterThanOrEqual(0);
  });
});
