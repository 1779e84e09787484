import { buildModel, forwardContext, generateTokens, type MoELayer, Rng, type TransformerLM, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeFFN, makeRouter, registry, tinyLM, trainLosses } from '../test/helpers.js';
import { balancedTable, HashRouter } from './hash.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const experts = (r: HashRouter, ids: number[], x = tf.zeros([ids.length, 4]) as tf.Tensor2D, batchShape?: number[]) =>
  Array.from(r.route(x, forwardContext(new Rng(1), false, { tokenIds: Int32Array.from(ids) }), batchShape ? { batchShape } : undefined).plan.expertIndex);

describe('hash router', () => {
  it('routing depends only on the token id: same id -> same expert, whatever the hidden state or the batch', () => {
    const r = new HashRouter(4, { hash: 'random', vocabSize: 16, seed: 42 });
    const ids = [3, 7, 3, 12, 7, 0];
    const a = experts(r, ids);
    const b = experts(r, ids, tf.tensor2d(new Rng(1).normalArray(24), [6, 4]));
    expect(b).toEqual(a);
    expect(a[0]).toBe(a[2]);
    expect(a[1]).toBe(a[4]);
    expect(experts(r, [7, 3])).toEqual([a[1], a[0]]);
    for (const e of a) expect(e).toBe(r.table[ids[a.indexOf(e)]!]);
    const { weight } = r.route(tf.zeros([2, 4]) as tf.Tensor2D, forwardContext(new Rng(1), false, { tokenIds: Int32Array.from([1, 2]) }));
    expect(weight).toBeNull();
  });

  it('balanced hash: every bucket`s corpus mass is within max_v freq(v) of total/E', () => {
    const rng = new Rng(2);
    const freq = Array.from({ length: 200 }, () => Math.floor(Math.exp(4 * rng.next()) * 10));
    const E = 8;
    const table = balancedTable(freq, E);
    const mass = new Array(E).fill(0);
    freq.forEach((f, v) => {
      mass[table[v]!] += f;
    });
    const total = freq.reduce((a, b) => a + b, 0);
    const maxF = Math.max(...freq);
    for (const m of mass) expect(Math.abs(m - total / E)).toBeLessThanOrEqual(maxF);
  });

  it('bigram, previous-token and position hashes use the right context; per-layer tables differ unless sameTableAllLayers', () => {
    const prev = new HashRouter(4, { hash: 'previous-token', vocabSize: 16, seed: 1 });
    const e = experts(prev, [5, 9, 2, 5, 9, 2], undefined, [2, 3]);
    expect(e).toEqual([prev.table[5], prev.table[5], prev.table[9], prev.table[5], prev.table[5], prev.table[9]]);
    const pos = new HashRouter(4, { hash: 'position', vocabSize: 16, seed: 1 });
    const p = experts(pos, [1, 2, 3, 4, 5, 6], undefined, [2, 3]);
    expect(p.slice(0, 3)).toEqual(p.slice(3));
    const big = new HashRouter(4, { hash: 'bigram', vocabSize: 16, seed: 1 });
    const g = experts(big, [1, 2, 3, 4, 2, 3], undefined, [2, 3]);
    expect(g[2]).toBe(g[5]); // same (2, 3) bigram
    expect(g[0]).toBe(big.table[1]); // first position: the id alone
    const t0 = makeRouter<HashRouter>({ type: 'hash' }, 4, 4, { vocabSize: 64, layerIndex: 0 }).table;
    const t1 = makeRouter<HashRouter>({ type: 'hash' }, 4, 4, { vocabSize: 64, layerIndex: 1 }).table;
    const s1 = makeRouter<HashRouter>({ type: 'hash', sameTableAllLayers: true }, 4, 4, { vocabSize: 64, layerIndex: 1 }).table;
    expect(Array.from(t1)).not.toEqual(Array.from(t0));
    expect(Array.from(s1)).toEqual(Array.from(t0));
  });

  it('KV-cached generation: the token-id hashes decode with the cache; bigram, previous-token and position fall back, saying why', () => {
    const random = buildModel<TransformerLM>(tinyLM({ type: 'hash' }), registry(), 0);
    expect(random.cacheBlocker()).toBeNull();
    const prompt = [1, 2, 3];
    expect(generateTokens(random, prompt, { maxNewTokens: 6, seed: 1 })).toEqual(generateTokens(random, prompt, { maxNewTokens: 6, seed: 1, cache: false }));
    for (const hash of ['bigram', 'previous-token', 'position']) {
      const model = buildModel<TransformerLM>(tinyLM({ type: 'hash', hash }), registry(), 0);
      const reasons: string[] = [];
      generateTokens(model, prompt, { maxNewTokens: 2, onFallback: (r) => reasons.push(r) });
      expect(reasons).toEqual([expect.stringMatching(new RegExp(`transformer\\.layers\\.0\\.ffn\\.router: the ${hash} hash reads the`))]);
    }
  });

  it('errors: missing token ids, ids outside the table, balanced without frequencies (JSON path)', () => {
    const layer = makeFFN<MoELayer>({ type: 'moe', experts: 4, router: { type: 'hash', vocabSize: 8 }, expert: { type: 'mlp', hidden: 8 } }, 4);
    expect(() => layer.forward(tf.zeros([1, 3, 4]), forwardContext(new Rng(1), false))).toThrow(/needs the token ids of the forward pass/);
    const r = new HashRouter(4, { hash: 'random', vocabSize: 8, seed: 1 });
    expect(() => experts(r, [9])).toThrow(/token id 9 is outside the hash table \(vocabSize 8\)/);
    expect(() => makeRouter({ type: 'hash', hash: 'balanced' }, 4, 4, { vocabSize: 8 })).toThrow(
      /\$\.block\.ffn\.router\.frequencies: the balanced hash needs/,
    );
    expect(() => makeRouter({ type: 'hash', hash: 'balanced', frequencies: [1, 2] }, 4, 4, { vocabSize: 8 })).toThrow(
      /\$\.block\.ffn\.router\.frequencies: has 2 entries/,
    );
    expect(() => makeRouter({ type: 'hash' })).toThrow(/\$\.block\.ffn\.router\.vocabSize: the hash router needs vocabSize/);
  });

  it('a hash-routed tiny LM learns; routing is parameter-free', () => {
    const model = buildModel<{ namedParameters(): [string, unknown][] }>(tinyLM({ type: 'hash' }), registry(), 0);
    expect(model.namedParameters().some(([n]) => n.includes('router'))).toBe(false);
    expect(lossRatio(trainLosses(tinyLM({ type: 'hash' })))).toBeLessThan(0.85);
  });
});
