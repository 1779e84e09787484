import { buildModel, type Module, type MoELayer, type TransformerLM } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { forwardContext, gradCheck, lossRatio, makeRouter, probe, registry, Rng, tf, tinyLM, trainLosses } from '../test/helpers.js';
import type { RMoERouter } from './rmoe.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const d = 6;
const E = 4;
/** Two rmoe routers of one build (layers 0 and 1): they share the cell through one `sharedModules` map. */
function pair(node: Record<string, unknown> = {}, seed = 0): [RMoERouter, RMoERouter] {
  const sharedModules = new Map<string, unknown>();
  const n = { type: 'rmoe', hidden: 5, initStd: 0.5, ...node };
  return [makeRouter<RMoERouter>(n, d, E, { sharedModules, layerIndex: 0 }, seed), makeRouter<RMoERouter>(n, d, E, { sharedModules, layerIndex: 1 }, seed)];
}
const input = (seed: number, T = 5) => tf.tensor2d(new Rng(seed).normalArray(T * d), [T, d]);
const arr = (t: tf.Tensor) => Array.from(t.dataSync());
const sig = (v: number) => 1 / (1 + Math.exp(-v));

/** Plain-JS GRU step with the cell's variables (the doc comment's equations). */
function refStep(cell: Module, x: number[][], h: number[][]): number[][] {
  const p = Object.fromEntries(cell.namedParameters().map(([n, v]) => [n, { v: Array.from(v.dataSync()), s: v.shape }]));
  const lin = (w: string, b: string, u: number[]) => p[b]!.v.map((bias, i) => bias + u.reduce((s, uj, j) => s + p[w]!.v[i * p[w]!.s[1]! + j]! * uj, 0));
  return x.map((xt, t) => {
    const ht = h[t]!;
    const r = lin('weight_ir', 'bias_ir', xt).map((a, i) => sig(a + lin('weight_hr', 'bias_hr', ht)[i]!));
    const u = lin('weight_iz', 'bias_iz', xt).map((a, i) => sig(a + lin('weight_hz', 'bias_hz', ht)[i]!));
    const hn = lin('weight_hn', 'bias_hn', ht);
    const n = lin('weight_in', 'bias_in', xt).map((a, i) => Math.tanh(a + r[i]! * hn[i]!));
    return n.map((ni, i) => (1 - u[i]!) * ni + u[i]! * ht[i]!);
  });
}
const rows = (t: tf.Tensor2D) => tf.unstack(t).map(arr);

describe('rmoe: layerwise recurrent router', () => {
  it('h_l = GRU(W1_l x_l, h_{l-1}) with h_0 = 0, z_l = W2_l h_l; the two layers share one cell', () => {
    const [r0, r1] = pair();
    expect(r1.cell).toBe(r0.cell);
    const x0 = input(1);
    const x1 = input(2);
    const ctx = forwardContext(new Rng(1), false);
    const h0 = r0.state(x0, ctx);
    const h1 = r1.state(x1, ctx);
    const zeros = rows(x0).map((row) => row.slice(0, 5).fill(0));
    const want0 = refStep(r0.cell, rows(tf.matMul(x0, r0.weight1, false, true) as tf.Tensor2D), zeros);
    const want1 = refStep(r0.cell, rows(tf.matMul(x1, r1.weight1, false, true) as tf.Tensor2D), want0);
    for (const [t, row] of rows(h0).entries()) {
      for (const [i, v] of row.entries()) expect(v).toBeCloseTo(want0[t]![i]!, 5);
    }
    for (const [t, row] of rows(h1).entries()) {
      for (const [i, v] of row.entries()) expect(v).toBeCloseTo(want1[t]![i]!, 5);
    }
    // logits = W2 h, Mixtral top-2 renormalised
    const res = r1.route(x1, forwardContext(new Rng(1), false, { carry: new Map([['rmoe:default', { h: h0, layer: 'l0' }]]) }));
    expect(arr(res.logits!)).toEqual(arr(tf.matMul(h1, r1.weight2, false, true)).map((v) => expect.closeTo(v, 5)));
    const w = arr(res.weight!);
    for (let t = 0; t < 5; t++) expect(w[t]! + w[5 + t]!).toBeCloseTo(1, 6);
  });

  it("layer l's routing depends on layer l-1's input through the carried state, even with x_l fixed", () => {
    const [r0, r1] = pair();
    const x1 = input(3);
    const logits1 = (x0: tf.Tensor2D) => {
      const ctx = forwardContext(new Rng(1), false);
      r0.route(x0, ctx);
      return arr(r1.route(x1, ctx).logits!);
    };
    const a = logits1(input(4));
    const b = logits1(input(5));
    const diff = Math.max(...a.map((v, i) => Math.abs(v - b[i]!)));
    expect(diff).toBeGreaterThan(1e-3);
    expect(logits1(input(4))).toEqual(a); // deterministic
    // without a previous layer (empty carry) layer 1 starts from h_0 = 0: a third, different answer
    const alone = arr(r1.route(x1, forwardContext(new Rng(1), false)).logits!);
    expect(Math.max(...alone.map((v, i) => Math.abs(v - a[i]!)))).toBeGreaterThan(1e-3);
    // a router of another group neither reads nor writes this chain
    const other = makeRouter<RMoERouter>({ type: 'rmoe', hidden: 5, initStd: 0.5, group: 'b' }, d, E);
    const ctx = forwardContext(new Rng(1), false);
    r0.route(input(4), ctx);
    other.route(input(6), ctx);
    expect(arr(r1.route(x1, ctx).logits!)).toEqual(a);
  });

  it('gradients reach the shared cell from every layer and match finite differences (tiny size)', () => {
    const [r0, r1] = pair({ hidden: 3 });
    const x0 = input(7, 3);
    const x1 = input(8, 3);
    const cellVars = r0.cell.namedParameters().map(([, v]) => v);
    expect(cellVars.length).toBe(12);
    const logitsOf = (layer: 0 | 1) => {
      const ctx = forwardContext(new Rng(1), false);
      const z0 = r0.route(x0, ctx).logits!;
      const z1 = r1.route(x1, ctx).logits!;
      return layer === 0 ? z0 : z1;
    };
    for (const layer of [0, 1] as const) {
      const { grads, value } = tf.variableGrads(() => probe(logitsOf(layer)), cellVars);
      value.dispose();
      const norm = Object.values(grads).reduce((s, g) => s + tf.sum(tf.square(g)).dataSync()[0]!, 0);
      expect(norm, `layer ${layer}`).toBeGreaterThan(1e-8);
    }
    // layer 1's logits reach layer 0's input projection only through the carried state
    const { grads } = tf.variableGrads(() => probe(logitsOf(1)), [r0.weight1]);
    expect(tf.sum(tf.abs(grads[r0.weight1.name]!)).dataSync()[0]).toBeGreaterThan(1e-6);
    const f = () => tf.add(probe(logitsOf(0), 2), probe(logitsOf(1), 3)) as tf.Scalar;
    for (const e of gradCheck(f, [...cellVars, r0.weight1, r1.weight1, r1.weight2], 4, 1e-3)) expect(e).toBeLessThan(2e-2);
  });

  it('the plain RNN cell: h = tanh(W_in x + b_in + W_hn h + b_hn), 4 parameters', () => {
    const [r0, r1] = pair({ cell: 'rnn' });
    expect(r0.cell.namedParameters().map(([n]) => n)).toEqual(['weight_in', 'bias_in', 'weight_hn', 'bias_hn']);
    const ctx = forwardContext(new Rng(1), false);
    const h0 = r0.state(input(1), ctx);
    const x1 = input(2);
    const h1 = r1.state(x1, ctx);
    const [wi, bi, wh, bh] = r0.cell.namedParameters().map(([, v]) => v);
    const want = tf.tanh(
      tf.add(tf.add(tf.matMul(tf.matMul(x1, r1.weight1, false, true), wi!, false, true), bi!), tf.add(tf.matMul(h0, wh!, false, true), bh!)),
    );
    arr(h1).forEach((v, i) => {
      expect(v).toBeCloseTo(arr(want)[i]!, 5);
    });
  });

  it('in a 2-layer LM: one cell under the first router, state reset every forward pass, loss falls', () => {
    const spec = tinyLM({ type: 'rmoe', k: 2, hidden: 8 }) as unknown as { stack: { groupSize: number } };
    spec.stack.groupSize = 2;
    const model = buildModel<TransformerLM>(spec as never, registry(), 2);
    const routers = model.layers.map((b) => (b.ffn as MoELayer).router as RMoERouter);
    expect(routers[1]!.cell).toBe(routers[0]!.cell);
    const names = model.namedParameters().map(([n]) => n);
    expect(names.filter((n) => n.includes('.rnn.'))).toHaveLength(12);
    expect(names).toContain('transformer.layers.0.ffn.router.rnn.weight_hz');
    expect(names).toContain('transformer.layers.1.ffn.router.weight1');
    const ids = tf.tensor2d(
      Int32Array.from({ length: 24 }, (_, i) => (i * 7) % 16),
      [2, 12],
      'int32',
    );
    const ctx = forwardContext(new Rng(1), false);
    const a = arr(model.forward(ids, ctx));
    expect(ctx.routing).toHaveLength(2);
    expect(arr(model.forward(ids, ctx))).toEqual(a); // same ctx reused: the carry restarts at h_0 = 0
    model.dispose();
    const losses = trainLosses(spec as never, 20);
    expect(lossRatio(losses)).toBeLessThan(0.85);
  });

  it('rejects bad configs with the JSON path', () => {
    expect(() => makeRouter({ type: 'rmoe', k: 5 }, d, E)).toThrow(/\$\.block\.ffn\.router\.k.*k = 5 exceeds the number of experts \(4\)/s);
    expect(() => makeRouter({ type: 'rmoe', k: 1 }, d, E)).toThrow(/router\.renormalize.*no task gradient/s);
    const sharedModules = new Map<string, unknown>();
    makeRouter({ type: 'rmoe', hidden: 4 }, d, E, { sharedModules });
    expect(() => makeRouter({ type: 'rmoe', hidden: 6 }, d, E, { sharedModules })).toThrow(/router\.hidden.*shares one cell.*hidden 4.*hidden 6/s);
    expect(() => makeRouter({ type: 'rmoe', hidden: 6, group: 'other' }, d, E, { sharedModules })).not.toThrow();
    const [r0, r1] = pair();
    const ctx = forwardContext(new Rng(1), false);
    r0.route(input(1, 5), ctx);
    expect(() => r1.route(input(1, 4), ctx)).toThrow(/has 5 tokens but this layer routes 4/);
  });
});
