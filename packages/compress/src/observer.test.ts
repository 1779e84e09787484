/**
 * The routing observer against a direct computation: a standalone softmax top-2 layer of 4 GELU MLP
 * experts whose router logits, gates and expert outputs are recomputed here from its weights with
 * plain tf ops; padding rows are excluded; per-domain and per-phase counts; non-detailed layers.
 */
import { activate, buildNode, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../test/registry.js';
import { RoutingObserver } from './observer.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const d = 8;
const E = 4;
const H = 6;

function layer(router: Record<string, unknown> = { type: 'softmax-topk', k: 2 }): MoELayer {
  const moe = buildNode<MoELayer>(registry, 'ffn', { type: 'moe', experts: E, router, expert: { type: 'mlp', hidden: H, activation: 'gelu' } }, '$', 3, {
    dModel: d,
    contextLength: 8,
    vocabSize: 32,
  });
  moe.assignPaths('ffn');
  return moe;
}

function run(moe: MoELayer, obs: RoutingObserver, x: tf.Tensor2D, tag: Parameters<RoutingObserver['hooks']>[0] = {}) {
  const { observed, ...extra } = obs.hooks(tag);
  const ctx = forwardContext(new Rng(0), false, extra);
  tf.tidy(() => {
    moe.forward(x, ctx);
  });
  obs.finish(ctx, tag, observed);
}

/** Everything the observer accumulates, recomputed from the layer's weights for the rows `rows` of x. */
function direct(moe: MoELayer, x: tf.Tensor2D, rows: number[]) {
  const W = (moe.router as unknown as { weight: tf.Variable }).weight.arraySync() as number[][];
  const bank = moe.experts as unknown as { w1: tf.Variable; w2: tf.Variable };
  const X = x.arraySync();
  const out = {
    count: new Float64Array(E),
    gateSum: new Float64Array(E),
    outNormSum: new Float64Array(E),
    reapSum: new Float64Array(E),
    maxAbsOut: new Float64Array(E),
    inSqGated: new Float64Array(E * d),
    hiddenSqGated: new Float64Array(E * H),
    logitSum: new Float64Array(E),
    logitGram: new Float64Array(E * E),
    coact: new Float64Array(E * E),
    entropySum: 0,
  };
  for (const t of rows) {
    const z = W.map((w) => w.reduce((a, wj, j) => a + wj * X[t]![j]!, 0));
    const m = Math.max(...z);
    const ex = z.map((v) => Math.exp(v - m));
    const Z = ex.reduce((a, b) => a + b, 0);
    const p = ex.map((v) => v / Z);
    out.entropySum -= p.reduce((a, q) => a + (q > 0 ? q * Math.log(q) : 0), 0);
    for (let i = 0; i < E; i++) {
      out.logitSum[i]! += z[i]!;
      for (let j = 0; j < E; j++) out.logitGram[i * E + j]! += z[i]! * z[j]!;
    }
    const top = [0, 1, 2, 3].sort((a, b) => p[b]! - p[a]! || a - b).slice(0, 2);
    const s = p[top[0]!]! + p[top[1]!]!;
    for (const i of top) for (const j of top) out.coact[i * E + j]! += 1;
    for (const e of top) {
      const g = p[e]! / s;
      const [y, u] = tf.tidy(() => {
        const xe = tf.tensor2d([X[t]!], [1, d]);
        const h = activate(tf.matMul(xe, tf.squeeze(tf.gather(bank.w1, [e]), [0]) as tf.Tensor2D), 'gelu') as tf.Tensor2D;
        return [Array.from(tf.matMul(h, tf.squeeze(tf.gather(bank.w2, [e]), [0]) as tf.Tensor2D).dataSync()), Array.from(h.dataSync())];
      });
      for (let i = 0; i < H; i++) out.hiddenSqGated[e * H + i]! += (g * u[i]!) ** 2;
      const norm = Math.hypot(...y);
      out.count[e]! += 1;
      out.gateSum[e]! += g;
      out.outNormSum[e]! += norm;
      out.reapSum[e]! += g * norm;
      out.maxAbsOut[e] = Math.max(out.maxAbsOut[e]!, ...y.map(Math.abs));
      for (let j = 0; j < d; j++) out.inSqGated[e * d + j]! += (g * X[t]![j]!) ** 2;
    }
  }
  return out;
}

const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-4) => {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!), `index ${i}: ${a[i]} vs ${b[i]}`).toBeLessThanOrEqual(tol * (1 + Math.abs(b[i]!)));
};

describe('RoutingObserver', () => {
  it('accumulates every statistic of the table equal to a direct computation from the weights', () => {
    const moe = layer();
    const x = tf.randomNormal([24, d], 0, 1, 'float32', 11) as tf.Tensor2D;
    const obs = new RoutingObserver({ hidden: true });
    run(moe, obs, x);
    const s = obs.layer('ffn');
    const want = direct(
      moe,
      x,
      Array.from({ length: 24 }, (_, t) => t),
    );
    expect(s.detailed).toBe(true);
    expect(s.tokens).toBe(24);
    close(s.count, want.count);
    close(s.gateSum, want.gateSum);
    close(s.outNormSum, want.outNormSum);
    close(s.reapSum, want.reapSum);
    close(s.maxAbsOut, want.maxAbsOut);
    close(s.inSqGated!, want.inSqGated);
    close(s.hiddenSqGated!, want.hiddenSqGated);
    close(s.logitSum, want.logitSum);
    close(s.logitGram, want.logitGram);
    close(s.coact, want.coact);
    expect(s.entropySum).toBeCloseTo(want.entropySum, 3);
    // derived scores
    close(
      s.reap(),
      Float64Array.from(want.reapSum, (r, e) => r / want.count[e]!),
    );
    expect(s.count.reduce((a, b) => a + b, 0)).toBe(48); // k = 2 per token
    const cos = s.logitCosine()!;
    for (let e = 0; e < E; e++) expect(cos[e * E + e]).toBeCloseTo(1, 6);
  });

  it('streams: two calls accumulate exactly what one call over all rows does', () => {
    const moe = layer();
    const x = tf.randomNormal([20, d], 0, 1, 'float32', 12) as tf.Tensor2D;
    const one = new RoutingObserver();
    run(moe, one, x);
    const two = new RoutingObserver();
    run(moe, two, tf.slice(x, [0, 0], [9, d]));
    run(moe, two, tf.slice(x, [9, 0], [11, d]));
    const a = one.layer('ffn');
    const b = two.layer('ffn');
    close(b.count, a.count, 0);
    close(b.reapSum, a.reapSum, 1e-5);
    close(b.logitGram, a.logitGram, 1e-5);
    expect(b.tokens).toBe(a.tokens);
  });

  it('excludes padding rows from every statistic', () => {
    const moe = layer();
    const x = tf.randomNormal([16, d], 0, 1, 'float32', 13) as tf.Tensor2D;
    const valid = Array.from({ length: 16 }, (_, t) => (t % 3 === 2 ? 0 : 1));
    const rows = valid.flatMap((v, t) => (v ? [t] : []));
    const padded = new RoutingObserver();
    run(moe, padded, x, { valid });
    const only = new RoutingObserver();
    run(moe, only, tf.gather(x, rows) as tf.Tensor2D);
    const a = padded.layer('ffn');
    const b = only.layer('ffn');
    expect(a.tokens).toBe(rows.length);
    close(a.count, b.count, 0);
    close(a.gateSum, b.gateSum, 1e-5);
    close(a.reapSum, b.reapSum, 1e-5);
    close(a.inSqGated!, b.inSqGated!, 1e-5);
    close(a.logitGram, b.logitGram, 1e-5);
    close(a.coact, b.coact, 0);
    expect(a.entropySum).toBeCloseTo(b.entropySum, 4);
    close(direct(moe, x, rows).reapSum, a.reapSum);
    expect(() => run(moe, padded, x, { valid: [1, 0] })).toThrow(/padding mask has 2 entries but the layer saw 16 token rows/);
  });

  it('keeps per-domain and per-phase counts and token totals', () => {
    const moe = layer();
    const xa = tf.randomNormal([10, d], 0, 1, 'float32', 14) as tf.Tensor2D;
    const xb = tf.randomNormal([6, d], 2, 1, 'float32', 15) as tf.Tensor2D;
    const obs = new RoutingObserver();
    run(moe, obs, xa, { domain: 'a' });
    run(moe, obs, xb, { domain: 'b', phase: 'decode' });
    const s = obs.layer('ffn');
    expect(s.domainTokens.get('a')).toBe(10);
    expect(s.domainTokens.get('b')).toBe(6);
    expect(s.phaseTokens.get('prefill')).toBe(10);
    expect(s.phaseTokens.get('decode')).toBe(6);
    const sum = (v: Float64Array) => v.reduce((p, c) => p + c, 0);
    expect(sum(s.domainCounts.get('a')!)).toBe(20);
    expect(sum(s.domainCounts.get('b')!)).toBe(12);
    close(
      s.count,
      s.domainCounts.get('a')!.map((c, e) => c + s.domainCounts.get('b')![e]!),
      0,
    );
    const a = new RoutingObserver();
    run(moe, a, xa);
    close(s.domainCounts.get('a')!, a.layer('ffn').count, 0);
  });

  it('mixing routers (Soft MoE) add their per-call counts; padding cannot be excluded there', () => {
    const moe = layer({ type: 'soft-moe', slotsPerExpert: 2 });
    const x = tf.randomNormal([8, d], 0, 1, 'float32', 16) as tf.Tensor2D;
    const obs = new RoutingObserver();
    run(moe, obs, x, { domain: 'a' });
    const s = obs.layer('ffn');
    expect(s.detailed).toBe(false);
    expect(s.tokens).toBe(8);
    expect(s.domainTokens.get('a')).toBe(8);
    expect(() => run(moe, obs, x, { valid: [1, 1, 1, 1, 1, 1, 1, 0] })).toThrow(/reports only per-call expert counts/);
    expect(() => obs.layer('nope')).toThrow(/no routing statistics for layer "nope"; observed layers: ffn/);
  });
});
