/**
 * Cached decoding of the attention mixtures: feeding a sequence in chunks through forwardCached (a
 * prompt prefill, then single tokens) gives every row of the full forward pass (max |Δlogit| <= 1e-4),
 * no row of a chunk sees a later one, and generation with the cache samples exactly what the full
 * re-run samples.
 */
import { buildModel, corePlugin, createRegistry, forwardContext, generateTokens, type NodeSpec, Rng, tf, type TransformerLM } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { attention } from './index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, attention);

function lm(attention: NodeSpec, extra: Record<string, unknown> = {}, block: Record<string, unknown> = {}): TransformerLM {
  return buildModel<TransformerLM>(
    {
      type: 'transformer-lm',
      vocabSize: 32,
      dModel: 16,
      contextLength: 16,
      stack: { groupSize: 2, repeats: 1 },
      block: { type: 'transformer', attention, ffn: { type: 'dense', hidden: 32 }, ...block },
      ...extra,
    } as NodeSpec,
    registry,
    3,
  );
}

const cases: [string, () => TransformerLM][] = [
  ['bam-soft-moa, KV experts, GQA, RoPE', () => lm({ type: 'bam-soft-moa', experts: 3, heads: 4, kvHeads: 2, routerInit: { dist: 'normal', std: 1 } })],
  [
    'bam-soft-moa, shared KV, parallel block',
    () =>
      lm({ type: 'bam-soft-moa', experts: 3, heads: 2, kv: 'shared', routerInit: { dist: 'normal', std: 1 } }, {}, { layout: 'parallel', normType: 'rmsnorm' }),
  ],
  [
    'bam-soft-moa, top-2 renormalised, learned positions',
    () =>
      lm(
        { type: 'bam-soft-moa', experts: 3, heads: 2, rope: false, routing: { type: 'topk', k: 2, weighting: 'renormalise' } },
        { positionEmbedding: 'learned' },
      ),
  ],
  [
    'moa, learned positions (the official layer has no RoPE)',
    () => lm({ type: 'moa', experts: 6, k: 2, headDim: 8, routerInit: { dist: 'normal', std: 1 } }, { positionEmbedding: 'learned' }),
  ],
  [
    'moa with RoPE, k = E, peri-norm',
    () => lm({ type: 'moa', experts: 3, k: 3, headDim: 4, rope: true, routerInit: { dist: 'normal', std: 1 } }, {}, { norm: 'peri' }),
  ],
  ['mae, token gate', () => lm({ type: 'mae', heads: 4, gateStd: 1 })],
  ['mae, sequence gate (running mean cached)', () => lm({ type: 'mae', heads: 2, gateStd: 1, granularity: 'sequence' })],
];

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('cached decoding of the attention mixtures equals the full pass', () => {
  for (const [name, make] of cases)
    it(name, () => {
      const model = make();
      expect(model.cacheBlocker()).toBeNull();
      const ids = [3, 9, 27, 1, 14, 5, 8, 22, 30, 2, 17];
      const ctx = () => forwardContext(new Rng(0), false);
      const want = tf.tidy(() => model.forward(tf.tensor2d([ids], [1, ids.length], 'int32'), ctx()).dataSync());
      const cache = model.createCache();
      const got: number[] = [];
      let at = 0;
      for (const m of [5, 1, 1, 3, 1]) {
        const chunk = ids.slice(at, at + m);
        got.push(...tf.tidy(() => model.forwardCached(tf.tensor2d([chunk], [1, m], 'int32'), ctx(), cache).dataSync()));
        at += m;
      }
      expect(cache.length).toBe(ids.length);
      expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(1e-4);
      // causality inside a chunk: its last token does not change its earlier rows
      const rows = (last: number) =>
        tf.tidy(() => {
          cache.reset();
          return model.forwardCached(tf.tensor2d([[4, 11, 6, last]], [1, 4], 'int32'), ctx(), cache).arraySync()[0]!;
        });
      const a = rows(0);
      const b = rows(31);
      for (let t = 0; t < 3; t++) expect(maxAbsDiff(a[t]!, b[t]!)).toBeLessThan(1e-5);
      expect(maxAbsDiff(a[3]!, b[3]!)).toBeGreaterThan(1e-4);
      cache.dispose();
      // generation within the context: the cached path (no fallback) samples what the full re-run samples
      const fallbacks: string[] = [];
      const prompt = [1, 7, 3, 30, 12];
      const cached = generateTokens(model, prompt, { maxNewTokens: 11, temperature: 0.8, seed: 4, onFallback: (r) => fallbacks.push(r) });
      const full = generateTokens(model, prompt, { maxNewTokens: 11, temperature: 0.8, seed: 4, cache: false });
      expect(fallbacks).toEqual([]);
      expect(cached).toEqual(full);
    });
});
