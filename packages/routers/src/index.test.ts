import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { buildModel, forwardContext, type LanguageModel, type Module, type MoELayer, Rng, type Router, routingMetrics, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeFFN, makeRouter, registry, tinyLM } from '../test/helpers.js';
import { routers } from './index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const dir = fileURLToPath(new URL('.', import.meta.url));

describe('the router catalogue', () => {
  it('every entry declares causalSafe / batchDependent flags and a docs reference; built routers carry the same flags', () => {
    for (const e of routers.entries) {
      expect(e.flags, e.name).toEqual({ causalSafe: expect.any(Boolean), batchDependent: expect.any(Boolean) });
      expect(e.reference, e.name).toMatch(/docs\/routers\.md#[a-z0-9-]+/);
      if (e.kind !== 'router') continue;
      // maskmoe has required options (the paper's values are UNKNOWN, so no defaults)
      const extra = e.name === 'maskmoe' ? { frequentFraction: 0.25, visibleExperts: 2, frequencies: new Array(16).fill(1) } : {};
      const r = makeRouter<Router>({ type: e.name, ...extra }, 8, 8, { vocabSize: 16, contextLength: 8 });
      expect(r.flags, e.name).toEqual(e.flags);
      expect(r.numExperts).toBe(8);
    }
  });

  it('every router source file opens with a doc comment giving its equation and its docs section', () => {
    const files = readdirSync(dir).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts') && !['index.ts', 'common.ts', 'balance.ts'].includes(f));
    expect(files.length).toBeGreaterThanOrEqual(18);
    for (const f of files) {
      const src = readFileSync(`${dir}${f}`, 'utf8');
      expect(src.startsWith('/**'), f).toBe(true);
      const doc = src.slice(0, src.indexOf('*/'));
      expect(doc, f).toMatch(/docs\/routers\.md#[a-z0-9-]+/);
      expect(doc, f).toMatch(/[=≈]/); // an equation
    }
  });

  it('no router uses scatterND (it has no gradient in tfjs)', () => {
    for (const f of readdirSync(dir).filter((n) => n.endsWith('.ts') && !n.endsWith('.test.ts')))
      expect(readFileSync(`${dir}${f}`, 'utf8'), f).not.toMatch(/scatterND/);
  });

  it('docs/routers.md has one catalogue section per entry, and every entry points to its own section', () => {
    const doc = readFileSync(fileURLToPath(new URL('../../../docs/routers.md', import.meta.url)), 'utf8');
    const catalogue = doc.slice(doc.indexOf('\n## Catalogue\n'), doc.indexOf('\n## Sources\n'));
    const sections = [...catalogue.matchAll(/^### (.+)$/gm)].map((m) => m[1]!.trim());
    expect(sections.sort()).toEqual(routers.entries.map((e) => e.name).sort());
    for (const e of routers.entries) expect(e.reference, e.name).toMatch(new RegExp(`^docs/routers\\.md#${e.name}\\b`));
  });
});

describe('routing metrics', () => {
  const layer = (router: Record<string, unknown>) => makeFFN<MoELayer>({ type: 'moe', experts: 4, router, expert: { type: 'mlp', hidden: 8 } }, 8);
  const metrics = (router: Record<string, unknown>, x: tf.Tensor) => {
    const ctx = forwardContext(new Rng(1), false);
    layer(router).forward(x, ctx);
    return routingMetrics(ctx.routing[0]!);
  };

  it('load fractions sum to 1; CV and MaxVio are 0 for exactly balanced routing and positive otherwise; entropies ≤ 1', () => {
    const x = tf.tensor3d(new Rng(1).normalArray(2 * 8 * 8), [2, 8, 8]);
    const rr = metrics({ type: 'uniform', k: 1, mode: 'round-robin' }, x);
    expect(rr.cv).toBe(0);
    expect(rr.maxVio).toBe(0);
    expect(rr.loadEntropy).toBeCloseTo(1, 9);
    const sk = metrics({ type: 'softmax-topk', k: 2 }, x);
    for (const m of [rr, sk]) expect(m.loadFraction.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
    expect(sk.cv).toBeGreaterThan(0);
    expect(sk.maxVio).toBeGreaterThan(0);
    expect(sk.maxOverMean).toBeCloseTo(1 + sk.maxVio, 9);
    for (const v of [sk.routingEntropy!, sk.marginalEntropy!, sk.loadEntropy]) {
      expect(v).toBeGreaterThan(0);
      expect(v).toBeLessThanOrEqual(1 + 1e-9);
    }
    expect(sk.zLoss).toBeGreaterThan(0);
    expect(sk.expertsPerTokenMin).toBe(2);
    expect(sk.expertsPerTokenMax).toBe(2);
  });

  it('computing statistics and recording assignments does not change the model output', () => {
    const model = buildModel<Module & LanguageModel>(tinyLM({ type: 'softmax-topk', k: 2 }), registry(), 3);
    const ids = tf.tensor2d(
      Int32Array.from({ length: 24 }, (_, i) => (i * 5) % 16),
      [2, 12],
      'int32',
    );
    const a = model.forward(ids, forwardContext(new Rng(1), false)).dataSync();
    const ctx = forwardContext(new Rng(1), false, { assignments: new Map() });
    const b = model.forward(ids, ctx).dataSync();
    routingMetrics(ctx.routing[0]!);
    const c = model.forward(ids, forwardContext(new Rng(1), false)).dataSync();
    expect(Array.from(b)).toEqual(Array.from(a));
    expect(Array.from(c)).toEqual(Array.from(a));
    expect(ctx.assignments!.size).toBe(1);
  });
});
