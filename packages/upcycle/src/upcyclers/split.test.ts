import { describe, expect, it } from 'vitest';
import { denseSpec, maxAbs, maxAbsDiff, registry, run, source } from '../../test/helpers.js';
import { balancedKMeans, checkPartition, contiguousPartition, normalisedRows, randomPartition, upcycle } from '../index.js';

const relu = source('relu', denseSpec({ layers: 2, glu: false }), 6);
const glu = source('glu', denseSpec({ layers: 2 }), 7);

describe('splitting a dense FFN into experts', () => {
  it('I11: every split reproduces the dense model when all experts are active with weight 1 (ReLU and SwiGLU)', () => {
    for (const seed of [relu, glu]) {
      const dense = run(seed.spec, seed.weights).logits;
      for (const method of [
        { type: 'moefication', experts: 4, k: 4 },
        { type: 'llama-moe', experts: 4, k: 4, router: { type: 'moefication-mlp', k: 4 } },
        { type: 'moe-split', experts: 8, k: 8, partition: 'random' },
      ]) {
        const r = upcycle(registry(), method, { seed });
        expect(maxAbsDiff(run(r.spec, r.weights).logits, dense), `${seed.name} ${method.type}`).toBeLessThan(1e-5 * maxAbs(dense));
        expect(r.report.totalParams).toBeGreaterThan(0);
      }
    }
  });

  it('with k < E the output changes, and the parameter count is the dense one plus the routers', () => {
    const r = upcycle(registry(), { type: 'moefication', experts: 4, k: 1 }, { seed: relu });
    expect(maxAbsDiff(run(r.spec, r.weights).logits, run(relu.spec, relu.weights).logits)).toBeGreaterThan(1e-4);
    const dense = r.report.source!.totalParams;
    expect(r.report.totalParams).toBe(dense + 2 * (4 * 16 + 4 * 4));
    expect(r.provenance.get('transformer.layers.0.ffn.experts.w1')!.op).toBe('slice');
    expect(r.provenance.get('transformer.layers.0.ffn.router.wa')!.op).toBe('computed');
  });

  it('partitions: every neuron once, equal sizes, deterministic; balanced k-means groups similar neurons', () => {
    const w1 = relu.weights.get('transformer.layers.0.ffn.w1.weight')!;
    const rows = normalisedRows(w1);
    const km = balancedKMeans(rows, 4, 0, 'x');
    checkPartition(km, 32);
    checkPartition(randomPartition(32, 4, 0, 'x'), 32);
    expect(contiguousPartition(8, 2)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
    ]);
    expect(balancedKMeans(rows, 4, 0, 'x')).toEqual(km);
    expect(km.every((g) => g.length === 8)).toBe(true);
    const cohesion = (p: number[][]) =>
      p.reduce((s, g) => s + g.reduce((t, i) => t + g.reduce((u, j) => u + rows[i]!.reduce((v, x, a) => v + x * rows[j]![a]!, 0), 0), 0), 0);
    expect(cohesion(km)).toBeGreaterThan(cohesion(randomPartition(32, 4, 0, 'x')));
    expect(() =>
      checkPartition(
        [
          [0, 1],
          [1, 2],
        ],
        3,
      ),
    ).toThrow(/neuron 1 is in two groups/);
  });

  it('llama-moe defaults: random split, noisy zero-initialised gate, renormalised top-k scaled by E/k', () => {
    const r = upcycle(registry(), { type: 'llama-moe', experts: 8, k: 2 }, { seed: glu });
    const ffn = (r.spec as unknown as { block: { ffn: { router: Record<string, unknown>; expert: { hidden: number } } } }).block.ffn;
    expect(ffn.router).toMatchObject({ type: 'softmax-topk', k: 2, renormalize: true, noisy: true, initStd: 0, scale: 4 });
    expect(ffn.expert.hidden).toBe(4);
    expect(() => upcycle(registry(), { type: 'moefication', experts: 5 }, { seed: glu })).toThrow(/5 experts do not divide the FFN's 32 neurons/);
    expect(() => upcycle(registry(), { type: 'moefication', kmeansOn: 'w3' }, { seed: relu })).toThrow(/needs a GLU FFN/);
  });
});

describe('cmoe', () => {
  const calibration = Array.from({ length: 6 }, (_, i) => Int32Array.from({ length: 16 }, (_, t) => (i * 37 + t * 11) % 256));

  it('I11: shared expert + every routed expert with γ = 0 reproduces the dense model; groups are balanced and disjoint', () => {
    const dense = run(glu.spec, glu.weights).logits;
    const r = upcycle(registry(), { type: 'cmoe', experts: 8, shared: 2, k: 6, markers: 4 }, { seed: glu, calibration });
    expect(maxAbsDiff(run(r.spec, r.weights).logits, dense)).toBeLessThan(1e-5 * maxAbs(dense));
    const ffn = (r.spec as unknown as { block: { ffn: Record<string, unknown> } }).block.ffn;
    expect(ffn).toMatchObject({ experts: 6, router: { type: 'cmoe-analytic', k: 6 }, expert: { hidden: 4 }, shared: { hidden: 8 } });
    expect(r.weights.get('transformer.layers.0.ffn.router.gate_rep')!.shape).toEqual([6, 16]);
    const routed = r.weights.get('transformer.layers.1.ffn.experts.w1')!;
    expect(routed.shape).toEqual([6, 16, 4]);
  });

  it('with k < the routed experts the output changes; bad input is named', () => {
    const r = upcycle(registry(), { type: 'cmoe', experts: 8, shared: 2, k: 2, markers: 4 }, { seed: glu, calibration });
    expect(maxAbsDiff(run(r.spec, r.weights).logits, run(glu.spec, glu.weights).logits)).toBeGreaterThan(1e-5);
    expect(() => upcycle(registry(), { type: 'cmoe', experts: 8 }, { seed: glu })).toThrow(/cmoe needs calibration token sequences/);
    expect(() => upcycle(registry(), { type: 'cmoe', experts: 8, shared: 2, k: 2 }, { seed: relu, calibration })).toThrow(/gated \(SwiGLU\) FFNs/);
  });
});
