/**
 * MLP / GLU experts (ReLU, GELU, SwiGLU, ReLU²), heterogeneous expert sizes, and shared (always-on)
 * experts in core's `moe` layer: every output equals a per-token loop over the plan written out in plain
 * JS; gradients by finite differences; masking removes routed experts but never the shared ones.
 */
import { attention } from '@moelab/attention';
import { buildModel, corePlugin, createRegistry, DispatchPlan, forwardContext, type MoELayer, Rng, tf } from '@moelab/core';
import { routers } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import { directionalGradCheck } from '../test/helpers.js';
import { experts } from './index.js';
import { HeteroMLPExperts, MLPExperts } from './mlp.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, routers, experts, attention);
const d = 5;
const act: Record<string, (v: number) => number> = {
  relu: (v) => Math.max(0, v),
  gelu: (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)),
  silu: (v) => v / (1 + Math.exp(-v)),
  relu2: (v) => Math.max(0, v) ** 2,
};
/** Abramowitz-Stegun 7.1.26 is too coarse; use a series / continued fraction good to ~1e-7. */
function erf(x: number): number {
  const s = Math.sign(x);
  const a = Math.abs(x);
  if (a < 2.5) {
    let sum = a;
    let term = a;
    for (let n = 1; n < 60; n++) {
      term *= (-a * a) / n;
      sum += term / (2 * n + 1);
    }
    return (s * 2 * sum) / Math.sqrt(Math.PI);
  }
  // continued fraction for erfc
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (a + f);
  return s * (1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f));
}

/** y = (act(x W1) [* x W3]) W2 for one token, W1 [d, h] row-major at offset o1, etc. */
function mlpRef(x: number[], w1: Float32Array, w2: Float32Array, w3: Float32Array | null, h: number, a: (v: number) => number, o1 = 0, o2 = 0): number[] {
  const hid = Array.from({ length: h }, (_, j) => {
    let s = 0;
    for (let i = 0; i < d; i++) s += x[i]! * w1[o1 + i * h + j]!;
    let g = a(s);
    if (w3) {
      let s3 = 0;
      for (let i = 0; i < d; i++) s3 += x[i]! * w3[o1 + i * h + j]!;
      g *= s3;
    }
    return g;
  });
  return Array.from({ length: d }, (_, o) => hid.reduce((acc, v, j) => acc + v * w2[o2 + j * d + o]!, 0));
}

function randomPlan(T: number, E: number, k: number, rng: Rng) {
  const tok: number[] = [];
  const ex: number[] = [];
  for (let slot = 0; slot < k; slot++)
    for (let t = 0; t < T; t++) {
      tok.push(t);
      ex.push((t * 7 + slot * 3 + rng.int(2)) % (E - 1)); // the last expert gets no token
    }
  return new DispatchPlan(Int32Array.from(tok), Int32Array.from(ex), T, E);
}

describe('MLP and GLU experts', () => {
  const cases = [
    ['relu', false],
    ['gelu', false],
    ['relu2', false],
    ['silu', true], // SwiGLU
    ['gelu', true], // GeGLU
  ] as const;
  for (const [activation, glu] of cases) {
    it(`${glu ? `${activation} GLU` : activation}: bank output = per-token loop over the plan, weighted`, () => {
      const rng = new Rng(1);
      const E = 4;
      const h = 3;
      const bank = new MLPExperts(d, E, { hidden: h, activation, glu }, rng);
      const T = 6;
      const x = tf.tensor2d(rng.normalArray(T * d), [T, d]);
      const plan = randomPlan(T, E, 2, rng);
      const weight = tf.tensor1d(rng.uniformArray(plan.size, 0.1, 1));
      const y = bank.apply(x, plan, weight, forwardContext(rng, true)).arraySync();
      const xs = x.arraySync();
      const w = weight.dataSync();
      const w1 = bank.w1.dataSync() as Float32Array;
      const w2 = bank.w2.dataSync() as Float32Array;
      const w3 = (bank.w3?.dataSync() as Float32Array | undefined) ?? null;
      const want = xs.map(() => new Array<number>(d).fill(0));
      for (let n = 0; n < plan.size; n++) {
        const t = plan.tokenIndex[n]!;
        const e = plan.expertIndex[n]!;
        mlpRef(xs[t]!, w1, w2, w3, h, act[activation]!, e * d * h, e * h * d).forEach((v, o) => {
          want[t]![o]! += w[n]! * v;
        });
      }
      y.forEach((row, t) => {
        row.forEach((v, o) => {
          expect(v).toBeCloseTo(want[t]![o]!, 5);
        });
      });
      expect(bank.parametersPerExpert()).toBe(d * h * (glu ? 3 : 2));
    });
  }

  it('the `glu` entry is SwiGLU by default; `mlp` refuses a count that differs from the layer', () => {
    const spec = (expert: unknown) => ({
      type: 'transformer-lm',
      vocabSize: 8,
      dModel: 8,
      contextLength: 8,
      stack: { groupSize: 1 },
      block: { type: 'transformer', attention: { type: 'mha', heads: 2 }, ffn: { type: 'moe', experts: 3, expert } },
    });
    const m = buildModel(spec({ type: 'glu', hidden: 4 }), registry);
    const names = m.namedParameters().map(([n]) => n);
    expect(names.filter((n) => n.includes('ffn.experts.'))).toEqual([
      'transformer.layers.0.ffn.experts.w1',
      'transformer.layers.0.ffn.experts.w3',
      'transformer.layers.0.ffn.experts.w2',
    ]);
    const bank = m.modules().find((x) => x instanceof MLPExperts) as MLPExperts;
    expect(bank.options).toEqual({ hidden: 4, activation: 'silu', glu: true });
    expect(() => buildModel(spec({ type: 'mlp', hidden: 4, count: 2 }), registry)).toThrow(/count 2 differs from the layer's 3 experts/);
  });
});

describe('heterogeneous expert sizes', () => {
  it('each expert has its own width; output = per-token loop; parameters = Σ d·h_e·2; unused experts are fine', () => {
    const rng = new Rng(3);
    const sizes = [2, 5, 3, 7];
    const bank = new HeteroMLPExperts(d, sizes, 'relu2', false, rng);
    expect(bank.namedParameters().map(([n, v]) => `${n}:${v.shape}`)).toEqual(sizes.flatMap((h, e) => [`${e}.w1:${d},${h}`, `${e}.w2:${h},${d}`]));
    expect(bank.parameterCount()).toBe(2 * d * (2 + 5 + 3 + 7));
    expect(bank.parametersPerExpert()).toBe((2 * d * (2 + 5 + 3 + 7)) / 4);
    const T = 7;
    const x = tf.tensor2d(rng.normalArray(T * d), [T, d]);
    const plan = randomPlan(T, 4, 2, rng);
    expect(plan.counts[3]).toBe(0);
    const weight = tf.tensor1d(rng.uniformArray(plan.size, 0.1, 1));
    const y = bank.apply(x, plan, weight, forwardContext(rng, true)).arraySync();
    const xs = x.arraySync();
    const w = weight.dataSync();
    const want = xs.map(() => new Array<number>(d).fill(0));
    for (let n = 0; n < plan.size; n++) {
      const t = plan.tokenIndex[n]!;
      const e = plan.expertIndex[n]!;
      const ex = bank.experts[e]!;
      mlpRef(xs[t]!, ex.w1.dataSync() as Float32Array, ex.w2.dataSync() as Float32Array, null, sizes[e]!, act.relu2!).forEach((v, o) => {
        want[t]![o]! += w[n]! * v;
      });
    }
    y.forEach((row, t) => {
      row.forEach((v, o) => {
        expect(v).toBeCloseTo(want[t]![o]!, 5);
      });
    });
    // gradients (GLU variant), and the unused expert gets exactly zero
    const g = new HeteroMLPExperts(d, sizes, 'silu', true, new Rng(4));
    const xv = tf.variable(x);
    const R = tf.tensor2d(rng.normalArray(T * d), [T, d]);
    const f = () => tf.sum(tf.mul(g.apply(xv, plan, weight, forwardContext(rng, true)), R)) as tf.Scalar;
    const errs = directionalGradCheck(f, [xv, ...g.experts.slice(0, 3).flatMap((e) => e.trainableVariables())], new Rng(5));
    for (const e of errs) expect(e).toBeLessThan(2e-2);
    const { grads } = tf.variableGrads(f, g.trainableVariables());
    for (const v of g.experts[3]!.trainableVariables()) {
      const gr = grads[v.name];
      expect(gr === undefined || tf.max(tf.abs(gr)).dataSync()[0] === 0).toBe(true);
    }
  });

  it('builds from the registry inside a moe layer, and checks the number of sizes', () => {
    const spec = (hiddenSizes: number[]) => ({
      type: 'transformer-lm',
      vocabSize: 8,
      dModel: 8,
      contextLength: 8,
      stack: { groupSize: 1 },
      block: {
        type: 'transformer',
        attention: { type: 'mha', heads: 2 },
        ffn: { type: 'moe', experts: 3, router: { type: 'softmax-topk', k: 1, renormalize: false }, expert: { type: 'mlp-hetero', hiddenSizes } },
      },
    });
    const m = buildModel(spec([4, 8, 16]), registry);
    const moe = m.modules().find((x) => x.path === 'transformer.layers.0.ffn') as MoELayer;
    expect((moe.experts as HeteroMLPExperts).sizes).toEqual([64, 128, 256]);
    const y = m.forward(tf.tensor2d([[1, 2, 3, 4]], [1, 4], 'int32'), forwardContext(new Rng(0), false));
    expect(y.shape).toEqual([1, 4, 8]);
    expect(() => buildModel(spec([4, 8]), registry)).toThrow(/hiddenSizes has 2 entries but the layer has 3 experts/);
  });
});

describe('shared (always-on) experts in the moe layer', () => {
  function layer(expertMask?: Map<string, Set<number>>) {
    const spec = {
      type: 'transformer-lm',
      vocabSize: 8,
      dModel: d + 1,
      contextLength: 8,
      stack: { groupSize: 1 },
      block: {
        type: 'transformer',
        attention: { type: 'mha', heads: 2 },
        ffn: {
          type: 'moe',
          experts: 4,
          router: { type: 'softmax-topk', k: 2 },
          expert: { type: 'mlp', hidden: 3 },
          shared: { type: 'glu', hidden: 5, count: 2 },
        },
      },
    };
    const m = buildModel(spec, registry, 7);
    const moe = m.modules().find((x) => x.path === 'transformer.layers.0.ffn') as MoELayer;
    return { moe, ctx: (training: boolean) => forwardContext(new Rng(0), training, expertMask ? { expertMask } : {}) };
  }

  it('output = routed output + Σ_s shared_s(x) for every token; masking every routed expert leaves exactly the shared part', () => {
    const { moe, ctx } = layer();
    const shared = moe.shared as MLPExperts;
    expect(shared.numExperts).toBe(2);
    const D = d + 1;
    const T = 6;
    const x = tf.tensor2d(new Rng(1).normalArray(T * D), [T, D]);
    const all = moe.forward(x, ctx(false));
    // the shared part alone: both shared experts on every token, weight 1
    const tok = Int32Array.from({ length: 2 * T }, (_, n) => n % T);
    const ex = Int32Array.from({ length: 2 * T }, (_, n) => Math.floor(n / T));
    const sharedOut = shared.apply(x, new DispatchPlan(tok, ex, T, 2), null, ctx(false));
    const routedOnly = moe.experts.apply(x, moe.router.route(x, ctx(false)).plan, moe.router.route(x, ctx(false)).weight, ctx(false));
    const diff = tf.max(tf.abs(tf.sub(all, tf.add(sharedOut, routedOnly)))).dataSync()[0]!;
    expect(diff).toBeLessThan(1e-5);
    const { moe: masked, ctx: mctx } = layer(new Map([['transformer.layers.0.ffn', new Set([0, 1, 2, 3])]]));
    const c = mctx(false);
    const onlyShared = masked.forward(x, c);
    expect(tf.max(tf.abs(tf.sub(onlyShared, sharedOut))).dataSync()[0]!).toBeLessThan(1e-6);
    expect(c.routing[0]!.counts).toEqual([0, 0, 0, 0]);
    // active parameters: router + 2 routed experts + both shared experts
    expect(moe.activeParameterCount()).toBe(4 * D + 2 * (2 * D * 3) + 2 * (3 * D * 5));
  });

  it('every token trains the shared experts; a masked routed expert gets zero gradient and contributes nothing', () => {
    const { moe, ctx } = layer(new Map([['transformer.layers.0.ffn', new Set([1])]]));
    const D = d + 1;
    const T = 8;
    const x = tf.tensor2d(new Rng(2).normalArray(T * D), [T, D]);
    const routed = moe.experts as MLPExperts;
    const shared = moe.shared as MLPExperts;
    const c = ctx(true);
    const f = () => tf.sum(tf.square(moe.forward(x, ctx(true)))) as tf.Scalar;
    const { grads } = tf.variableGrads(f, [routed.w1, routed.w2, shared.w1, shared.w2, shared.w3!]);
    const expertGrad = (g: tf.Tensor, e: number) => tf.max(tf.abs(tf.gather(g, [e]))).dataSync()[0]!;
    for (const v of [routed.w1, routed.w2]) {
      expect(expertGrad(grads[v.name]!, 1)).toBe(0);
      expect(expertGrad(grads[v.name]!, 0) + expertGrad(grads[v.name]!, 2) + expertGrad(grads[v.name]!, 3)).toBeGreaterThan(0);
    }
    for (const v of [shared.w1, shared.w2, shared.w3!]) for (const s of [0, 1]) expect(expertGrad(grads[v.name]!, s)).toBeGreaterThan(0);
    moe.forward(x, c);
    expect(c.routing[0]!.counts[1]).toBe(0);
    expect(c.routing[0]!.intendedCounts![1]).toBeGreaterThan(0);
  });
});
