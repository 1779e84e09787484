import { directionalGradCheck, forwardContext, MultiHeadAttention, Rng, tf } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { attentionBuilder, input, maxDiff, useCpuBackend } from '../test/helpers.js';
import type { MixtureOfAttentionHeads } from './moa.js';

useCpuBackend();

const build = attentionBuilder<MixtureOfAttentionHeads>('moa');
const totalAux = (ctx: ReturnType<typeof forwardContext>) => tf.addN(ctx.aux.map((a) => tf.mul(a.value, a.coef))) as tf.Scalar;

describe('moa', () => {
  it('official parameter names and layouts', () => {
    const m = build({ experts: 6, k: 2, headDim: 8, router: { noisy: true } });
    m.assignPaths();
    expect(m.namedParameters().map(([n, v]) => `${n} ${v.shape}`)).toEqual([
      'q_proj.w_gate 16,6',
      'q_proj.w_noise 16,6',
      'q_proj.experts.w 6,16,8',
      'q_proj.output_experts.w 6,8,16',
      'k_proj.weight 8,16',
      'v_proj.weight 8,16',
    ]);
    // zero router (uniform at step 0), defaults of the official WMT14 script
    expect(
      m.gate
        .get('w_gate')
        .dataSync()
        .every((v) => v === 0),
    ).toBe(true);
    expect(m.options.aux).toEqual({ cv: 0, switch: 0.01, z: 0.001 });
  });

  // The official layer's golden fixtures (fixtures/moa) are checked by @moelab/verify (runner `moa`).

  it('§4.4: with k = E and every weight forced to 1, MoA equals multi-query attention over the stacked experts', () => {
    const E = 4;
    const dh = 4;
    const m = build({ experts: E, k: E, headDim: dh, routerInit: { dist: 'normal', std: 1 }, router: { weighting: 'renormalise' } }, 16);
    // renormalised weights of k = E sum to 1; scaling them by E ... is not 1 each: force 1 by a flat router
    m.gate.get('w_gate').assign(tf.zeros([16, E]));
    const x = input(1, 6, 16);
    // zero router + renormalise: every weight 1/E; so E · MoA = MQA with H = E heads
    const y = tf.mul(m.forward(x, forwardContext(new Rng(0), false)), E);
    const mqa = new MultiHeadAttention(16, { heads: E, headDim: dh, ropeDims: 0 }, new Rng(1));
    const wq = m.queryExperts.get('w'); // [E, d, dh]
    mqa.q.weight.assign(tf.transpose(tf.reshape(tf.transpose(wq, [1, 0, 2]), [16, E * dh])));
    const rep = (w: tf.Tensor) => tf.tile(w, [E, 1]); // every head reads the one shared K/V head
    mqa.k.weight.assign(rep(m.kProj.get('weight')));
    mqa.v.weight.assign(rep(m.vProj.get('weight')));
    mqa.o.weight.assign(tf.transpose(tf.reshape(m.outputExperts.get('w'), [E * dh, 16])));
    expect(maxDiff(y, mqa.forward(x, forwardContext(new Rng(0), false)))).toBeLessThan(1e-5);
  });

  it('causality: changing token t+1 leaves outputs at positions <= t unchanged (rope on and off)', () => {
    for (const rope of [false, true]) {
      const m = build({ experts: 6, k: 2, headDim: 8, rope, routerInit: { dist: 'normal', std: 1 } });
      const x = input(1, 8, 16);
      const a = m.forward(x, forwardContext(new Rng(0), false));
      const bumped = tf.concat([tf.slice(x, [0, 0, 0], [1, 4, 16]), tf.add(tf.slice(x, [0, 4, 0], [1, 4, 16]), 2)], 1);
      const b = m.forward(bumped, forwardContext(new Rng(0), false));
      expect(maxDiff(tf.slice(a, [0, 0, 0], [1, 4, 16]), tf.slice(b, [0, 0, 0], [1, 4, 16]))).toBeLessThan(1e-6);
      expect(maxDiff(a, b)).toBeGreaterThan(1e-3);
    }
  });

  it('finite-difference gradients of the output and of the auxiliary losses (router included)', () => {
    // seed 3: every token's k-th and (k+1)-th probabilities are well apart (asserted), so no selection flips
    const m = build(
      { experts: 5, k: 2, headDim: 4, rope: true, routerInit: { dist: 'normal', std: 1 }, router: { aux: { cv: 0.1, switch: 0.1, z: 0.1 } } },
      8,
      3,
    );
    const x = tf.variable(input(2, 4, 8));
    const p = tf.softmax(m.logits(x, forwardContext(new Rng(0), false))).arraySync() as number[][];
    const gaps = p.map((r) => [...r].sort((a, b) => b - a)).map((s) => s[1]! - s[2]!);
    expect(Math.min(...gaps)).toBeGreaterThan(0.02);
    const R = input(2, 4, 8, 9);
    const f = () => {
      const ctx = forwardContext(new Rng(0), true);
      const y = m.forward(x, ctx);
      return tf.add(tf.sum(tf.mul(y, R)), totalAux(ctx)) as tf.Scalar;
    };
    for (const e of directionalGradCheck(f, [x, ...m.trainableVariables()], new Rng(3), 1e-3)) expect(e).toBeLessThan(2e-2);
  });

  it('auxiliary losses: uniform router gives switch = 1 with balanced counts, z = (log E)², cv of equal sums = 0', () => {
    const m = build({ experts: 4, k: 4, headDim: 4 }, 8);
    const probs = tf.fill([6, 4], 0.25) as tf.Tensor2D;
    const logits = tf.zeros([6, 4]) as tf.Tensor2D;
    const chosen = Int32Array.from({ length: 24 }, (_, i) => i % 4);
    const a = m.auxLosses(logits, probs, chosen);
    expect(a.switch.dataSync()[0]).toBeCloseTo(1, 6);
    expect(a.z.dataSync()[0]).toBeCloseTo(Math.log(4) ** 2, 5);
    expect(a.cv.dataSync()[0]).toBeCloseTo(0, 8);
    // eval mode adds no auxiliary loss; training adds switch and z with the defaults
    const ev = forwardContext(new Rng(0), false);
    m.forward(input(1, 3, 8), ev);
    expect(ev.aux).toHaveLength(0);
    const tr = forwardContext(new Rng(0), true);
    m.forward(input(1, 3, 8), tr);
    expect(tr.aux.map((x) => `${x.name} ${x.coef}`)).toEqual(['moa_switch 0.01', 'moa_z 0.001']);
    expect(tr.routing[0]!.expertsPerToken).toBe(4);
  });

  it('sampleTopk: training samples slots outside the deterministic top; eval is unaffected', () => {
    const m = build({ experts: 6, k: 2, headDim: 4, router: { sampleTopk: 1 }, routerInit: { dist: 'normal', std: 1 } }, 8);
    const x = input(2, 8, 8);
    const evalCounts = forwardContext(new Rng(0), false);
    m.forward(x, evalCounts);
    const tr = forwardContext(new Rng(1), true);
    m.forward(x, tr);
    expect(tr.routing[0]!.counts).not.toEqual(evalCounts.routing[0]!.counts);
    expect(tr.routing[0]!.counts.reduce((a, b) => a + b, 0)).toBe(32);
  });

  it('bad input: one-line errors naming the JSON path', () => {
    expect(() => build({ experts: 4, k: 5 })).toThrow('$.block.attention.k: k = 5 exceeds the number of experts (4)');
    expect(() => build({ experts: 8, k: 3 })).toThrow('$.block.attention.k: dModel 16 is not divisible by k 3; set headDim');
    expect(() => build({ experts: 8, k: 2, router: { sampleTopk: 3 } })).toThrow('$.block.attention.router.sampleTopk: sampleTopk = 3 exceeds k = 2');
  });

  it('counters: parameters, active parameters (k of E experts) and FLOPs per token', () => {
    const d = 16;
    const m = build({ experts: 8, k: 2, headDim: 4 }, d);
    expect(m.parameterCount()).toBe(d * 8 + 2 * 4 * d + 8 * 2 * d * 4);
    expect(m.activeParameterCount()).toBe(d * 8 + 2 * 4 * d + 2 * 2 * d * 4);
    expect(m.flopsPerToken(32)).toBe(2 * (d * 8 + 2 * 4 * d + 2 * 2 * d * 4) + 2 * 32 * 2 * 4);
  });
});
