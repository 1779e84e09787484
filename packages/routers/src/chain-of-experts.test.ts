import { buildModel, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeFFN, registry, tinyLM, tinyLMWithFFN, trainLosses } from '../test/helpers.js';
import type { ChainOfExperts } from './chain-of-experts.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const coe = (o: Record<string, unknown> = {}) => ({
  type: 'chain-of-experts',
  experts: 4,
  iterations: 2,
  router: { type: 'softmax-topk', k: 2 },
  expert: { type: 'mlp', hidden: 8 },
  ...o,
});

describe('chain-of-experts', () => {
  it('C = 1 returning the increment equals a plain moe layer; the literal form adds x', () => {
    const one = makeFFN<ChainOfExperts>(coe({ iterations: 1 }), 8);
    const lit = makeFFN<ChainOfExperts>(coe({ iterations: 1, returnIncrement: false }), 8);
    const moe = makeFFN<MoELayer>({ type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 8 } }, 8);
    const x = tf.tensor3d(new Rng(1).normalArray(2 * 3 * 8), [2, 3, 8]);
    const a = one.forward(x, forwardContext(new Rng(1), false)).dataSync();
    const b = moe.forward(x, forwardContext(new Rng(1), false)).dataSync();
    const c = lit.forward(x, forwardContext(new Rng(1), false)).dataSync();
    const xs = x.dataSync();
    for (let i = 0; i < a.length; i++) {
      expect(a[i]).toBeCloseTo(b[i]!, 5);
      expect(c[i]).toBeCloseTo(b[i]! + xs[i]!, 5);
    }
  });

  it('C iterations share one expert bank, have their own routers, report stats per iteration and chain their inputs', () => {
    const m = makeFFN<ChainOfExperts>(coe({ iterations: 3 }), 8);
    const names = m.namedParameters().map(([n]) => n);
    expect(names.filter((n) => n.startsWith('experts.'))).toHaveLength(2); // w1, w2 once
    expect(names.filter((n) => n.includes('router')).length).toBe(3);
    const r0 = (m.iterations[0]!.router as unknown as { weight: tf.Variable }).weight.dataSync();
    const r1 = (m.iterations[1]!.router as unknown as { weight: tf.Variable }).weight.dataSync();
    expect(Array.from(r0)).not.toEqual(Array.from(r1));
    const ctx = forwardContext(new Rng(1), false);
    const x = tf.tensor3d(new Rng(2).normalArray(2 * 3 * 8), [2, 3, 8]);
    const y = m.forward(x, ctx);
    expect(ctx.routing).toHaveLength(3);
    // reference: x1 = x + moe0(x), x2 = x1 + moe1(x1), x3 = x2 + moe2(x2); output = x3 − x
    let h: tf.Tensor = x;
    for (const it of m.iterations) h = tf.add(h, it.forward(h, forwardContext(new Rng(1), false)));
    const ref = tf.sub(h, x).dataSync();
    const got = y.dataSync();
    for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(ref[i]!, 5);
  });

  it('refuses batch-dependent and mixing routers; a tiny CoE LM learns', () => {
    expect(() => buildModel(tinyLM('softmax-topk', coe({ router: 'expert-choice' })), registry(), 0)).toThrow(
      /\$\.block\.ffn\.router: this router is batch-dependent/,
    );
    expect(() => makeFFN(coe({ router: 'soft-moe' }))).toThrow(/\$\.block\.ffn\.router: chain-of-experts needs a token-choice router/);
    expect(lossRatio(trainLosses(tinyLMWithFFN(coe({ router: { type: 'softmax-topk', k: 1, renormalize: false } }))))).toBeLessThan(0.85);
  });
});
