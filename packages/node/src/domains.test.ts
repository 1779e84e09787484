import { describe, expect, it } from 'vitest';
import { buildModel, forwardContext, lmLoss, Rng, type TrainableModel, tf } from '@moelab/core';
import type { Corpus } from './corpus.js';
import { DomainTokens, evaluateHeldOut, parseMixture } from './domains.js';
import { createDefaultRegistry } from './registry.js';

const corpus: Corpus = {
  name: 't',
  docs: ['a', 'b', 'c'].flatMap((d) => [
    { id: `${d}#train`, domain: d, split: 'train' as const, text: d.repeat(400) },
    { id: `${d}#val`, domain: d, split: 'val' as const, text: d.repeat(100) },
  ]),
};

describe('domain mixtures', () => {
  it('parses mix, domain:X and domain:X+mix:α, with close names for a typo', () => {
    const names = ['kjv', 'jargon', 'devil'];
    expect(parseMixture('mix:uniform', names, '$')).toEqual({ kind: 'mix' });
    expect(parseMixture('domain:devil', names, '$')).toEqual({ kind: 'domain', domain: 'devil', mix: 0 });
    expect(parseMixture('domain+mix:0.1', names, '$', 'kjv')).toEqual({ kind: 'domain', domain: 'kjv', mix: 0.1 });
    expect(() => parseMixture('domain:devl', names, '$.phases[0].data')).toThrow('$.phases[0].data: unknown domain "devl". Did you mean: devil?');
    expect(() => parseMixture('domain+mix:0.1', names, '$.data')).toThrow(/names no domain/);
    expect(() => parseMixture('domain:kjv+mix:1.5', names, '$.data')).toThrow(/fraction must be in \[0, 1\]/);
  });

  it('windows come from the asked domain, or from all in the mixed proportions', () => {
    const data = new DomainTokens(corpus);
    const only = data.source(parseMixture('domain:b', data.domains, '$'));
    expect(new Set(only.batch(new Rng(1), 8, 8, 'train'))).toEqual(new Set(['b'.charCodeAt(0)]));
    // α = 0.3 over 3 domains: p(b) = 0.7 + 0.1, p(a) = p(c) = 0.1.
    const mixed = data.source(parseMixture('domain:b+mix:0.3', data.domains, '$'));
    const w = mixed.batch(new Rng(2), 3000, 1, 'train');
    const share = (ch: string) => Array.from({ length: 3000 }, (_, i) => w[i * 2]).filter((t) => t === ch.charCodeAt(0)).length / 3000;
    expect(share('b')).toBeGreaterThan(0.77);
    expect(share('b')).toBeLessThan(0.83);
    expect(share('a')).toBeGreaterThan(0.08);
    expect(share('a')).toBeLessThan(0.12);
  });

  it('held-out bits per byte per domain (fixed windows) and routing shares that sum to 1', () => {
    const registry = createDefaultRegistry();
    const data = new DomainTokens(corpus);
    const model = buildModel<TrainableModel>(
      {
        type: 'transformer-lm',
        vocabSize: 256,
        dModel: 16,
        contextLength: 8,
        stack: { groupSize: 1, repeats: 1 },
        block: {
          type: 'transformer',
          attention: { type: 'mha', heads: 2 },
          ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 16 } },
        },
      },
      registry,
      0,
    );
    const o = { batches: 2, batchSize: 2, seqLen: 8, seed: 3, routing: true };
    const ev = evaluateHeldOut(model, data, o);
    expect(Object.keys(ev.bitsPerByte)).toEqual(['a', 'b', 'c']);
    // Domain b's held-out text is one repeated byte, so every window is "bbbbbbbbb": its bits per byte are the
    // cross-entropy of that window over ln 2.
    const ce = tf.tidy(() => lmLoss(model, tf.tensor2d(new Int32Array(18).fill(98), [2, 9], 'int32'), forwardContext(new Rng(0), false)).ce.dataSync()[0]!);
    expect(ev.bitsPerByte.b).toBeCloseTo(ce / Math.LN2, 5);
    expect(ev.mean).toBeCloseTo((ev.bitsPerByte.a! + ev.bitsPerByte.b! + ev.bitsPerByte.c!) / 3, 10);
    for (const d of ['a', 'b', 'c']) {
      expect(ev.routingShares![d]!.length).toBe(4);
      expect(ev.routingShares![d]!.reduce((s, x) => s + x, 0)).toBeCloseTo(1, 6);
    }
    // The same windows every time.
    expect(evaluateHeldOut(model, data, o).bitsPerByte).toEqual(ev.bitsPerByte);
    model.dispose();
  });
});
