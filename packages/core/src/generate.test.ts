import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../test/helpers.js';
import {
  buildModel,
  forwardContext,
  generateTokens,
  KVCache,
  type LanguageModel,
  type Module,
  MoelabError,
  type NodeSpec,
  Rng,
  tf,
  type TransformerLM,
} from './index.js';

beforeAll(async () => {
  // On the moelab-cpu test pass the full path runs the fused attention kernels, the cached one tfjs ops.
  await tf.setBackend('cpu');
});

const registry = testRegistry();

function lm(attention: NodeSpec, extra: Record<string, unknown> = {}, ffn: NodeSpec = { type: 'dense', hidden: 32 }): TransformerLM {
  const spec = {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: 16,
    contextLength: 16,
    stack: { groupSize: 2, repeats: 1 },
    block: { type: 'transformer', norm: 'pre', attention, ffn },
    ...extra,
  } as NodeSpec;
  return buildModel<TransformerLM>(spec, registry, 3);
}

const moeut = (): TransformerLM =>
  lm(
    { type: 'switchhead', heads: 2, headDim: 8, experts: 4, k: 2 },
    {
      stack: { groupSize: 2, repeats: 2, order: 'abab' },
      headBias: true,
      block: {
        type: 'transformer',
        norm: 'peri',
        attention: { type: 'switchhead', heads: 2, headDim: 8, experts: 4, k: 2 },
        ffn: { type: 'sigma-moe', experts: 8, k: 2, expertSize: 8 },
      },
    },
  );

/** Logits of the last row of a full (uncached) forward over `window`. */
function fullLogits(model: LanguageModel, window: number[]): Float32Array {
  return tf.tidy(() => {
    const logits = model.forward(tf.tensor2d([window], [1, window.length], 'int32'), forwardContext(new Rng(0), false));
    return tf.reshape(tf.slice(logits, [0, window.length - 1, 0], [1, 1, -1]), [-1]).dataSync() as Float32Array;
  });
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/**
 * Generates with the cache and checks, at every step, the logits it sampled from against a full
 * re-run over the window the documented slide rule gives (the last contextLength tokens while they
 * fit; after a slide, the last `keep` tokens at the slide and everything since).
 */
function expectCachedEqualsFull(model: TransformerLM, prompt: number[], n: number, slideKeep?: number): number {
  const C = model.contextLength;
  const keep = slideKeep ?? Math.floor(C / 2);
  const seen: Float32Array[] = [];
  const fallbacks: string[] = [];
  const out = generateTokens(model, prompt, {
    maxNewTokens: n,
    temperature: 1,
    seed: 5,
    slideKeep,
    onFallback: (r) => fallbacks.push(r),
    onLogits: (l, i) => {
      seen[i] = Float32Array.from(l);
    },
  });
  expect(fallbacks).toEqual([]);
  expect(seen.length).toBe(n);
  const ids = [...prompt, ...out];
  let start = Math.max(0, prompt.length - C);
  let worst = 0;
  for (let i = 0; i < n; i++) {
    const L = prompt.length + i;
    if (L - start > C) start = L - keep;
    worst = Math.max(worst, maxAbsDiff(seen[i]!, fullLogits(model, ids.slice(start, L))));
  }
  expect(worst).toBeLessThanOrEqual(1e-4);
  return worst;
}

const prompt = [1, 7, 3, 30, 12];

describe('generation with a KV cache equals the full re-run, every step (max |Δlogit| <= 1e-4)', () => {
  it('MHA with RoPE (all channels)', () => {
    expectCachedEqualsFull(lm({ type: 'mha', heads: 4 }), prompt, 9);
  });

  it('MHA without RoPE, post-norm, tied embeddings', () => {
    expectCachedEqualsFull(
      lm(
        { type: 'mha', heads: 2, ropeDims: 0 },
        {
          tieEmbeddings: true,
          block: { type: 'transformer', norm: 'post', attention: { type: 'mha', heads: 2, ropeDims: 0 }, ffn: { type: 'dense', hidden: 32 } },
        },
      ),
      prompt,
      9,
    );
  });

  it('MHA with partial RoPE and a MoE FFN (softmax top-2)', () => {
    const ffn = { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 16 } };
    expectCachedEqualsFull(lm({ type: 'mha', heads: 2, ropeDims: 4 }, {}, ffn), prompt, 9);
  });

  it('a parallel block (one shared norm) with learned absolute positions and no RoPE: positions offset by the cache', () => {
    const block = { type: 'transformer', layout: 'parallel', norms: 1, attention: { type: 'mha', heads: 2, ropeDims: 0 }, ffn: { type: 'dense', hidden: 32 } };
    expectCachedEqualsFull(lm({ type: 'mha', heads: 2 }, { positionEmbedding: 'learned', block }), prompt, 20);
  });

  it('SwitchHead (value and output experts per token) and dense-gated SwitchHead', () => {
    expectCachedEqualsFull(lm({ type: 'switchhead', heads: 2, headDim: 8, experts: 4, k: 2 }), prompt, 9);
    expectCachedEqualsFull(lm({ type: 'switchhead', heads: 2, headDim: 8, experts: 1 }), prompt, 9);
  });

  it('BAM soft Mixture-of-Attention: KV experts and shared KV (GQA), soft and top-k routing', () => {
    expectCachedEqualsFull(lm({ type: 'bam-soft-moa', experts: 3, heads: 2, kv: 'experts' }), prompt, 9);
    expectCachedEqualsFull(lm({ type: 'bam-soft-moa', experts: 2, heads: 4, kvHeads: 2, kv: 'shared', routing: { type: 'topk', k: 1 } }), prompt, 9);
    expectCachedEqualsFull(lm({ type: 'bam-soft-moa', experts: 2, heads: 2, rope: false }, { positionEmbedding: 'learned' }), prompt, 20);
  });

  it('a MoEUT stack (2 shared blocks x 2 repeats, peri-norm, SwitchHead, sigma-MoE): one cache per application', () => {
    const model = moeut();
    expect(model.createCache().layers.length).toBe(4);
    expectCachedEqualsFull(model, prompt, 9);
  });

  it('past the context: slideKeep = contextLength re-prefills the uncached window every step; the default slides by half', () => {
    const model = lm({ type: 'mha', heads: 4 });
    const long = Array.from({ length: 20 }, (_, i) => (i * 7) % 32); // longer than the context (16)
    expectCachedEqualsFull(model, long, 12, 16);
    expectCachedEqualsFull(model, prompt, 30); // slides twice (at 16 positions, keeping 8)
    expectCachedEqualsFull(moeut(), prompt, 20, 5);
  });

  it('the cached and uncached paths sample the same tokens (same seed)', () => {
    const model = moeut();
    const a = generateTokens(model, prompt, { maxNewTokens: 10, temperature: 0.7, topK: 5, seed: 9 });
    const b = generateTokens(model, prompt, { maxNewTokens: 10, temperature: 0.7, topK: 5, seed: 9, cache: false });
    expect(a).toEqual(b);
  });
});

describe('forwardCached', () => {
  it('a prompt fed in chunks (offset masks) gives every row of the full pass; no row sees a later one', () => {
    for (const model of [lm({ type: 'mha', heads: 4 }), moeut()]) {
      const ids = [3, 9, 27, 1, 14, 5, 8, 22, 30, 2];
      const want = tf.tidy(() => model.forward(tf.tensor2d([ids], [1, 10], 'int32'), forwardContext(new Rng(0), false)).dataSync());
      const cache = model.createCache();
      const got: number[] = [];
      let at = 0;
      for (const m of [3, 1, 4, 2]) {
        const chunk = ids.slice(at, at + m);
        got.push(...tf.tidy(() => model.forwardCached(tf.tensor2d([chunk], [1, m], 'int32'), forwardContext(new Rng(0), false), cache).dataSync()));
        at += m;
      }
      expect(cache.length).toBe(10);
      expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(1e-4);
      // Causality inside a chunk: changing its last token leaves its earlier rows unchanged.
      cache.reset();
      const rows = (last: number) =>
        tf.tidy(() => {
          cache.reset();
          return model.forwardCached(tf.tensor2d([[4, 11, 6, last]], [1, 4], 'int32'), forwardContext(new Rng(0), false), cache).arraySync()[0]!;
        });
      const a = rows(0);
      const b = rows(31);
      // (Exactly equal on cpu; the native kernel's blocked sums may move the last bits.)
      for (let t = 0; t < 3; t++) expect(maxAbsDiff(a[t]!, b[t]!)).toBeLessThan(1e-6);
      expect(maxAbsDiff(a[3]!, b[3]!)).toBeGreaterThan(1e-3);
      cache.dispose();
    }
  });

  it('a cache fed past the context length: one-line error naming the limit', () => {
    const model = lm({ type: 'mha', heads: 4 });
    const cache = model.createCache();
    const ctx = () => forwardContext(new Rng(0), false);
    model.forwardCached(tf.tensor2d([Array.from({ length: 15 }, (_, i) => i)], [1, 15], 'int32'), ctx(), cache);
    model.forwardCached(tf.tensor2d([[1]], [1, 1], 'int32'), ctx(), cache);
    const past = () => model.forwardCached(tf.tensor2d([[2]], [1, 1], 'int32'), ctx(), cache);
    expect(past).toThrow(MoelabError);
    expect(past).toThrow(/^KV cache full: 16 cached \+ 1 new positions exceed the model's contextLength 16; re-prefill the last window/);
    expect(() => past()).not.toThrow(/\n/);
    // The same limit holds for one attention module's cache used directly.
    const kv = new KVCache(2, 'transformer.layers.0.attention');
    kv.append({ k: tf.zeros([1, 1, 2, 4]), v: tf.zeros([1, 1, 2, 4]) });
    expect(() => kv.append({ k: tf.zeros([1, 1, 1, 4]), v: tf.zeros([1, 1, 1, 4]) })).toThrow(
      /^transformer\.layers\.0\.attention: KV cache full: 2 cached \+ 1 new positions exceed the model's contextLength 2/,
    );
    expect(() => kv.append({ k: tf.zeros([1, 1, 1, 4]), v: tf.zeros([1, 1, 2, 4]) })).toThrow(/"v" has 2 new positions, "k" has 1/);
    kv.dispose();
    cache.dispose();
  });

  it('is inference-only and needs the model’s own cache', () => {
    const model = lm({ type: 'mha', heads: 4 });
    const cache = model.createCache();
    expect(() => model.forwardCached(tf.tensor2d([[1]], [1, 1], 'int32'), forwardContext(new Rng(0), true), cache)).toThrow(/cached decoding is for inference/);
    const other = moeut().createCache();
    expect(() => model.forwardCached(tf.tensor2d([[1]], [1, 1], 'int32'), forwardContext(new Rng(0), false), other)).toThrow(
      /4 layer caches, the model runs 2 blocks/,
    );
  });

  it('generate: an empty prompt and a bad slideKeep are one-line errors', () => {
    const model = lm({ type: 'mha', heads: 4 });
    expect(() => generateTokens(model, [], { maxNewTokens: 2 })).toThrow(/prompt is empty/);
    expect(() => generateTokens(model, prompt, { slideKeep: 17 })).toThrow(/slideKeep 17 must be an integer in 1\.\.16/);
  });
});

describe('models that cannot decode with a cache', () => {
  it('eval-time capacity drops: createCache refuses with the layer path; generate falls back to the full re-run and says why', () => {
    const ffn = { type: 'moe', experts: 4, capacityFactor: 1, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 16 } };
    const model = lm({ type: 'mha', heads: 4 }, {}, ffn);
    expect(model.cacheBlocker()).toMatch(/^transformer\.layers\.0\.ffn: capacity factor 1 at inference drops assignments/);
    expect(() => model.createCache()).toThrow(/^cannot decode with a KV cache: transformer\.layers\.0\.ffn: capacity factor 1/);
    const reasons: string[] = [];
    const a = generateTokens(model, prompt, { maxNewTokens: 6, seed: 2, onFallback: (r) => reasons.push(r) });
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toMatch(/^no KV cache, re-running the window per token: transformer\.layers\.0\.ffn: capacity factor 1/);
    expect(a).toEqual(generateTokens(model, prompt, { maxNewTokens: 6, seed: 2, cache: false }));
    // Dropless at inference (evalCapacityFactor 0) decodes with the cache.
    const dropless = lm({ type: 'mha', heads: 4 }, {}, { ...ffn, evalCapacityFactor: 0 });
    expect(dropless.cacheBlocker()).toBeNull();
  });

  it('a batch-dependent router (Mixture of Tokens) is refused by createCache, with its reason', () => {
    const ffn = {
      type: 'moe',
      experts: 4,
      allowBatchDependent: true,
      router: { type: 'mixture-of-tokens', groupSize: 2 },
      expert: { type: 'mlp', hidden: 16 },
    };
    const model = lm({ type: 'mha', heads: 4 }, {}, ffn);
    expect(() => model.createCache()).toThrow(/transformer\.layers\.0\.ffn: router \w+ mixes tokens or expert parameters across the rows of a call/);
  });

  it('an attention module without forwardCached makes the model fall back', () => {
    const model = lm({ type: 'mha', heads: 4 });
    const att = model.layers[1]!.attention as Module & { forwardCached?: unknown };
    att.forwardCached = undefined;
    expect(model.cacheBlocker()).toMatch(/^transformer\.layers\.1\.attention: this attention module \(MultiHeadAttention\) has no cached path/);
  });
});
