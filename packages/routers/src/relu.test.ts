import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradCheck, lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { ReLURouter } from './relu.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('relu router (ReMoE)', () => {
  it('an expert is active iff R = ReLU(Wx) > 0; weight = R; a token may get zero experts', () => {
    const r = new ReLURouter(4, 4, { k: 2, lambda0: 1e-8, alpha: 1.2 }, new Rng(1));
    r.weight.assign(tf.eye(4));
    const x = tf.tensor2d([
      [1, -1, 0.5, 0],
      [-1, -2, -3, -0.1],
      [0.2, 0.3, 0.4, 0.5],
    ]);
    const { plan, weight } = r.route(x, forwardContext(new Rng(1), false));
    const w = weight!.dataSync();
    const got = Array.from(plan.tokenIndex, (t, n) => [t, plan.expertIndex[n]!, w[n]!] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    expect(got.map(([t, e]) => [t, e])).toEqual([
      [0, 0],
      [0, 2],
      [2, 0],
      [2, 1],
      [2, 2],
      [2, 3],
    ]);
    for (const [t, e, v] of got) expect(v).toBeCloseTo(x.arraySync()[t]![e]!, 6);
  });

  it('load-balanced L1 = E/(K·N²)·Σ_e (Σ_t R)(Σ_t [R > 0]), pushed with coefficient λ; its gradient matches finite differences', () => {
    const r = new ReLURouter(6, 4, { k: 2, lambda0: 1e-3, alpha: 1.2 }, new Rng(2));
    const x = tf.tensor2d(new Rng(3).normalArray(10 * 6), [10, 6]);
    const ctx = forwardContext(new Rng(1), true);
    r.route(x, ctx);
    const R = tf.relu(tf.matMul(x, r.weight, false, true)).arraySync() as number[][];
    let v = 0;
    for (let e = 0; e < 4; e++) v += R.reduce((s, row) => s + row[e]!, 0) * R.filter((row) => row[e]! > 0).length;
    expect(ctx.aux[0]!.name).toBe('relu_l1');
    expect(ctx.aux[0]!.coef).toBe(1e-3);
    expect(ctx.aux[0]!.value.dataSync()[0]).toBeCloseTo((4 / (2 * 100)) * v, 5);
    const f = () => {
      const c = forwardContext(new Rng(1), true);
      const { weight } = r.route(x, c);
      return tf.add(tf.sum(tf.mul(weight!, tf.linspace(0.5, 1.5, weight!.size))), c.aux[0]!.value) as tf.Scalar;
    };
    for (const e of gradCheck(f, [r.weight], 3, 1e-3)) expect(e).toBeLessThan(2e-2);
  });

  it('λ controller: ×α while sparsity < 1 − K/E, ÷α above it; on a toy, sparsity is driven past 1 − K/E and λ turns back', () => {
    const E = 8;
    const d = 8;
    const r = new ReLURouter(d, E, { k: 2, lambda0: 1e-2, alpha: 1.2 }, new Rng(4));
    expect(r.targetSparsity).toBeCloseTo(0.75, 9);
    // all-positive router: sparsity 0 < 0.75 -> λ grows
    r.weight.assign(tf.fill([E, d], 0.01));
    r.route(tf.ones([4, d]) as tf.Tensor2D, forwardContext(new Rng(1), true));
    r.afterStep();
    expect(r.lastSparsity).toBe(0);
    expect(r.lambda).toBeCloseTo(1.2e-2, 9);
    // all-zero outputs: sparsity 1 > 0.75 -> λ shrinks
    r.route(tf.fill([4, d], -1) as tf.Tensor2D, forwardContext(new Rng(1), true));
    r.afterStep();
    expect(r.lambda).toBeCloseTo(1e-2, 9);
    // eval passes record nothing: no update
    r.route(tf.ones([4, d]) as tf.Tensor2D, forwardContext(new Rng(1), false));
    r.afterStep();
    expect(r.lambda).toBeCloseTo(1e-2, 9);

    // stationary toy: the task rewards routing mass (−mean Σ R), the controlled L1 pushes it down. Inputs
    // carry a constant feature (as hidden states do): with centred inputs and no bias, ReLU(w·x) is active
    // for about half the tokens whatever w, and no regulariser could reach 1 − K/E.
    r.weight.assign(tf.randomNormal([E, d], 0, 0.5, 'float32', 5));
    const rng = new Rng(6);
    const xv = rng.normalArray(64 * d);
    for (let t = 0; t < 64; t++) xv[t * d] = 1;
    const xs = tf.tensor2d(xv, [64, d]);
    const opt = tf.train.adam(2e-2);
    const active: number[] = [];
    const lambdas: number[] = [];
    for (let i = 0; i < 120; i++) {
      opt.minimize(
        () => {
          const ctx = forwardContext(rng, true);
          const { weight } = r.route(xs, ctx);
          const a = ctx.aux[0]!;
          return tf.add(tf.neg(tf.div(tf.sum(weight!), 64)), tf.mul(a.value, a.coef)) as tf.Scalar;
        },
        false,
        [r.weight],
      );
      r.afterStep();
      lambdas.push(r.lambda);
      active.push(r.route(xs, forwardContext(rng, false)).plan.size / 64);
    }
    // starts dense (≈ E/2 active), λ grows until the routing is sparser than the target K = 2, then λ falls
    expect(active[0]).toBeGreaterThan(3);
    const crossed = active.findIndex((a) => a <= 2);
    expect(crossed).toBeGreaterThan(0);
    const peak = lambdas.indexOf(Math.max(...lambdas));
    expect(peak).toBeLessThanOrEqual(crossed + 1);
    expect(lambdas.at(-1)!).toBeLessThan(lambdas[peak]! / 100);
  });

  it('rejects k > experts and α ≤ 1 with the JSON path; a tiny ReLU-routed LM learns', () => {
    expect(() => makeRouter({ type: 'relu', k: 5 })).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds the number of experts \(4\)/);
    expect(() => makeRouter({ type: 'relu', alpha: 1 })).toThrow(/\$\.block\.ffn\.router\.alpha/);
    expect(lossRatio(trainLosses(tinyLM({ type: 'relu' })))).toBeLessThan(0.85);
  });
});
