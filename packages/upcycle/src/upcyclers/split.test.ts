import { describe, expect, it } from 'vitest';
import { denseSpec, maxAbs, maxAbsDiff, registry, run, source } from '../../test/helpers.js';
import { balancedKMeans, checkPartition, contiguousPartition, normalisedRows, randomPartition, upcycle, type WeightMap } from '../index.js';

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

/** Calibration sequences of 16 tokens (the context length), varied so that k-means finds clusters. */
const calibration = Array.from({ length: 8 }, (_, i) =>
  Int32Array.from({ length: 16 }, (_, t) => (i < 4 ? (i * 37 + t * 11) % 128 : 128 + ((i * t * 7 + t) % 128))),
);

/** Neuron indices of each expert of layer `l`, recovered by matching the experts' W1 columns with the dense W1 rows. */
function expertNeurons(weights: WeightMap, dense: WeightMap, l: number, which = 'experts'): number[][] {
  const w = weights.get(`transformer.layers.${l}.ffn.${which}.w1`)!;
  const [E, d, size] = w.shape as [number, number, number];
  const w1 = dense.get(`transformer.layers.${l}.ffn.w1.weight`)!;
  const h = w1.shape[0]!;
  return Array.from({ length: E }, (_, e) =>
    Array.from({ length: size }, (_, c) => {
      const col = Array.from({ length: d }, (_, a) => w.data[e * d * size + a * size + c]!);
      return Array.from({ length: h }, (_, j) => j).find((j) => col.every((v, a) => v === w1.data[j * d + a]))!;
    }),
  );
}

describe('MoEfication: co-activation split and the fitted router', () => {
  it('I11: co-activation groups are balanced and disjoint and reproduce the dense model with every expert active (ReLU and SwiGLU); deterministic', () => {
    for (const seed of [relu, glu]) {
      const dense = run(seed.spec, seed.weights).logits;
      const method = { type: 'moefication', experts: 4, k: 4, partition: 'co-activation' };
      const r = upcycle(registry(), method, { seed, calibration });
      expect(maxAbsDiff(run(r.spec, r.weights).logits, dense), seed.name).toBeLessThan(1e-5 * maxAbs(dense));
      const groups = expertNeurons(r.weights, seed.weights, 0);
      checkPartition(groups, 32);
      expect(groups.every((g) => g.length === 8)).toBe(true);
      const again = upcycle(registry(), method, { seed, calibration });
      expect(Array.from(again.weights.get('transformer.layers.1.ffn.experts.w2')!.data)).toEqual(
        Array.from(r.weights.get('transformer.layers.1.ffn.experts.w2')!.data),
      );
      expect(Array.from(again.weights.get('transformer.layers.1.ffn.router.wa')!.data)).toEqual(
        Array.from(r.weights.get('transformer.layers.1.ffn.router.wa')!.data),
      );
    }
  });

  it('with calibration tokens the router is fitted away from the centres / identity and says so; routerFit.epochs 0 keeps them', () => {
    const fitted = upcycle(registry(), { type: 'moefication', experts: 4, k: 1 }, { seed: relu, calibration });
    const plain = upcycle(registry(), { type: 'moefication', experts: 4, k: 1, routerFit: { epochs: 0 } }, { seed: relu, calibration });
    expect(Array.from(plain.weights.get('transformer.layers.0.ffn.router.wb')!.data)).toEqual([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
    expect(plain.provenance.get('transformer.layers.0.ffn.router.wb')).toMatchObject({ op: 'new' });
    expect(
      maxAbsDiff(fitted.weights.get('transformer.layers.0.ffn.router.wa')!.data, plain.weights.get('transformer.layers.0.ffn.router.wa')!.data),
    ).toBeGreaterThan(1e-3);
    const fb = fitted.weights.get('transformer.layers.0.ffn.router.wb')!.data;
    expect(maxAbsDiff(fb, [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1])).toBeGreaterThan(1e-3);
    expect(fitted.provenance.get('transformer.layers.0.ffn.router.wb')).toMatchObject({ op: 'computed' });
    expect(fitted.report.notes.join('\n')).toMatch(/layer 0: router top-1 covers [\d.]+% of held-out activation mass after the fit \([\d.]+% at the centres\)/);
    // the experts are the same either way: the fit only touches the router
    expect(Array.from(fitted.weights.get('transformer.layers.0.ffn.experts.w1')!.data)).toEqual(
      Array.from(plain.weights.get('transformer.layers.0.ffn.experts.w1')!.data),
    );
  });

  it('bad configurations are named', () => {
    expect(() => upcycle(registry(), { type: 'moefication', partition: 'co-activation', experts: 4 }, { seed: relu })).toThrow(
      /^sources\.calibration: partition "co-activation" needs calibration token sequences/,
    );
    expect(() => upcycle(registry(), { type: 'moefication', partition: 'coactivation' }, { seed: relu, calibration })).toThrow(/upcycler\.partition/);
  });
});

describe('LLaMA-MoE: gradient-importance splits', () => {
  it('importance (neuron-independent) and sharing-inter (residual expert + disjoint routed experts) reproduce the dense model with every expert active', () => {
    const dense = run(glu.spec, glu.weights).logits;
    for (const partition of ['importance', 'sharing-inter']) {
      const r = upcycle(
        registry(),
        {
          type: 'llama-moe',
          experts: 4,
          k: partition === 'importance' ? 4 : 3,
          partition,
          router: { type: 'moefication-mlp', k: partition === 'importance' ? 4 : 3 },
        },
        { seed: glu, calibration },
      );
      expect(maxAbsDiff(run(r.spec, r.weights).logits, dense), partition).toBeLessThan(1e-5 * maxAbs(dense));
      const routed = expertNeurons(r.weights, glu.weights, 1);
      const residual = partition === 'sharing-inter' ? expertNeurons(r.weights, glu.weights, 1, 'shared') : [];
      checkPartition([...routed, ...residual], 32);
      if (partition === 'sharing-inter') {
        const ffn = (r.spec as unknown as { block: { ffn: Record<string, unknown> } }).block.ffn;
        expect(ffn).toMatchObject({ experts: 3, expert: { hidden: 8 }, shared: { hidden: 8 } });
      }
    }
  });

  it('sharing-inner: experts of the top neurons per data cluster; all active = the dense FFN with each neuron counted by its multiplicity', () => {
    const r = upcycle(
      registry(),
      { type: 'llama-moe', experts: 4, k: 4, partition: 'sharing-inner', expertSize: 12, router: { type: 'moefication-mlp', k: 4 } },
      { seed: glu, calibration },
    );
    const scaled: WeightMap = new Map(glu.weights);
    let shared = 0;
    for (const l of [0, 1]) {
      const groups = expertNeurons(r.weights, glu.weights, l);
      expect(groups.every((g) => g.length === 12 && new Set(g).size === 12)).toBe(true);
      const m = new Array(32).fill(0);
      for (const g of groups) for (const j of g) m[j]++;
      shared += m.filter((x) => x > 1).length;
      const w2 = glu.weights.get(`transformer.layers.${l}.ffn.w2.weight`)!;
      scaled.set(`transformer.layers.${l}.ffn.w2.weight`, { shape: w2.shape, data: w2.data.map((v, i) => v * m[i % 32]!) });
    }
    expect(shared).toBeGreaterThan(0); // 4 × 12 = 48 slots for 32 neurons
    const expected = run(glu.spec, scaled).logits;
    expect(maxAbsDiff(run(r.spec, r.weights).logits, expected)).toBeLessThan(1e-5 * maxAbs(expected));
    expect(maxAbsDiff(expected, run(glu.spec, glu.weights).logits)).toBeGreaterThan(1e-3);
  });

  it('domain sample lists are the data clusters; bad configurations are named', () => {
    const domainSamples = [0, 1, 2, 3].map((e) => calibration.slice(2 * e, 2 * e + 2));
    const r = upcycle(registry(), { type: 'llama-moe', experts: 4, k: 2, partition: 'importance' }, { seed: glu, domainSamples });
    checkPartition(expertNeurons(r.weights, glu.weights, 0), 32);
    expect(() => upcycle(registry(), { type: 'llama-moe', experts: 4, partition: 'importance' }, { seed: glu })).toThrow(
      /^sources\.calibration: partition "importance" needs data to measure neuron importance/,
    );
    expect(() => upcycle(registry(), { type: 'llama-moe', experts: 4, partition: 'sharing-inter' }, { seed: glu, domainSamples })).toThrow(
      /^sources\.domainSamples: 4 domain sample lists for 3 routed experts/,
    );
    expect(() => upcycle(registry(), { type: 'llama-moe', experts: 4, residual: 4, partition: 'sharing-inter' }, { seed: glu, calibration })).toThrow(
      /^upcycler\.residual: residual 4 leaves no routed expert of 4/,
    );
    expect(() => upcycle(registry(), { type: 'llama-moe', experts: 4, expertSize: 40, partition: 'sharing-inner' }, { seed: glu, calibration })).toThrow(
      /^upcycler\.expertSize: expertSize 40 exceeds the FFN's 32 neurons/,
    );
  });
});

describe('cmoe', () => {
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
