/**
 * Fast Feedforward (docs/peer-fff.md#invariants-the-tests-check-1): D = 0 is a dense FFN, Σ P_l = 1 and uniform
 * leaves for zero nodes, inference == hard descent == hardened training (with and without the official
 * b2s omission), entropies in [0, log 2] and hardening lowers them, the follow-up's balance loss and
 * master leaf, region leaks, masking, finite-difference gradients, and a tiny LM that trains.
 */
import { attention } from '@moelab/attention';
import { buildModel, corePlugin, createRegistry, forwardContext, Rng, Trainer, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { directionalGradCheck, maxAbsDiff, patternSource } from '../test/helpers.js';
import { FFFLayer, type FFFOptions } from './fff.js';
import { experts } from './index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const d = 6;
function layer(o: Partial<FFFOptions>, seed = 1) {
  const f = new FFFLayer(d, { leafWidth: 4, ...o }, new Rng(seed));
  f.assignPaths('ffn');
  return f;
}
const input = (n: number, seed = 2) => tf.tensor2d(new Rng(seed).normalArray(n * d), [n, d]);
const arr = (t: tf.Tensor) => Array.from(t.dataSync());

/** leaf_l(x) for one token, from the raw parameter arrays (b2 optional). */
function leafOut(f: FFFLayer, l: number, x: ArrayLike<number>, withB2 = true): number[] {
  const L = f.options.leafWidth;
  const w1 = f.w1s.dataSync();
  const b1 = f.b1s.dataSync();
  const w2 = f.w2s.dataSync();
  const b2 = f.b2s.dataSync();
  const h = new Array<number>(L).fill(0);
  for (let j = 0; j < L; j++) {
    let s = b1[l * L + j]!;
    for (let i = 0; i < d; i++) s += x[i]! * w1[(l * d + i) * L + j]!;
    h[j] = Math.max(0, s); // relu
  }
  const y = new Array<number>(d).fill(0);
  for (let o = 0; o < d; o++) {
    let s = withB2 ? b2[l * d + o]! : 0;
    for (let j = 0; j < L; j++) s += h[j]! * w2[(l * L + j) * d + o]!;
    y[o] = s;
  }
  return y;
}

/** Hard descent written out: node n -> 2n+1 (left) / 2n+2 (right, iff w·x + b ≥ 0); leaf = node − (2^D − 1). */
function descend(f: FFFLayer, x: ArrayLike<number>): number {
  const w = f.nodeWeights!.dataSync();
  const b = f.nodeBiases!.dataSync();
  let node = 0;
  for (let level = 0; level < f.depth; level++) {
    let s = b[node]!;
    for (let i = 0; i < d; i++) s += w[node * d + i]! * x[i]!;
    node = s >= 0 ? 2 * node + 2 : 2 * node + 1;
  }
  return node - (2 ** f.depth - 1);
}

describe('fff', () => {
  it('D = 0 is one dense FFN of width ℓ, in training and inference', () => {
    const f = layer({ depth: 0 });
    expect(f.nodeWeights).toBeUndefined();
    const x = input(5);
    const xs = x.arraySync();
    const want = xs.flatMap((row) => leafOut(f, 0, row));
    for (const training of [true, false]) {
      const y = f.forward(x, forwardContext(new Rng(0), training));
      arr(y).forEach((v, i) => {
        expect(v).toBeCloseTo(want[i]!, 5);
      });
    }
    expect(f.parameterCount()).toBe(FFFLayer.parameterCount(d, 0, 4));
  });

  it('leaf probabilities sum to 1; zero nodes give the uniform mixture 2^-D; training output = Σ_l P_l leaf_l', () => {
    const f = layer({ depth: 3 });
    const x = input(7);
    const ctx = forwardContext(new Rng(0), true);
    const y = f.forward(x, ctx);
    const P = f.lastSoft!.leafProbs;
    expect(P.shape).toEqual([7, 8]);
    for (const s of arr(tf.sum(P, 1))) expect(s).toBeCloseTo(1, 6);
    // the soft mixture written out
    const Pd = P.arraySync();
    const xs = x.arraySync();
    const want = xs.flatMap((row, t) => {
      const acc = new Array<number>(d).fill(0);
      for (let l = 0; l < 8; l++)
        leafOut(f, l, row).forEach((v, o) => {
          acc[o]! += Pd[t]![l]! * v;
        });
      return acc;
    });
    arr(y).forEach((v, i) => {
      expect(v).toBeCloseTo(want[i]!, 5);
    });
    // P_l is the product of the path decisions: node n's children 2n+1 (left, 1 − p) and 2n+2 (right, p)
    const p = f.lastSoft!.nodeProbs.arraySync();
    for (let t = 0; t < 7; t++)
      for (let l = 0; l < 8; l++) {
        let node = 0;
        let prob = 1;
        for (let level = 2; level >= 0; level--) {
          const right = (l >> level) & 1;
          prob *= right ? p[t]![node]! : 1 - p[t]![node]!;
          node = 2 * node + 1 + right;
        }
        expect(node - 7).toBe(l);
        expect(Pd[t]![l]!).toBeCloseTo(prob, 6);
      }
    f.nodeWeights!.assign(tf.zerosLike(f.nodeWeights!));
    f.nodeBiases!.assign(tf.zerosLike(f.nodeBiases!));
    f.forward(x, forwardContext(new Rng(0), true));
    for (const v of arr(f.lastSoft!.leafProbs)) expect(v).toBeCloseTo(1 / 8, 7);
  });

  it('inference is the hard descent to one leaf and equals hardened training (b2s included), or omits b2s like the official eval', () => {
    const f = layer({ depth: 3, trainHardened: true });
    const x = input(9, 4);
    const xs = x.arraySync();
    const evalY = f.forward(x, forwardContext(new Rng(0), false));
    const leaves = Array.from(f.lastLeaves!);
    expect(leaves).toEqual(xs.map((row) => descend(f, row)));
    const want = xs.flatMap((row) => leafOut(f, descend(f, row), row));
    arr(evalY).forEach((v, i) => {
      expect(v).toBeCloseTo(want[i]!, 5);
    });
    const trainY = f.forward(x, forwardContext(new Rng(0), true));
    expect(maxAbsDiff(trainY, evalY)).toBeLessThan(1e-5);
    for (const v of arr(f.lastSoft!.leafProbs)) expect(v === 0 || v === 1).toBe(true);
    // the official eval_forward drops b2s
    const g = layer({ depth: 3, officialEvalOmitsLeafOutputBias: true });
    const gy = g.forward(x, forwardContext(new Rng(0), false));
    const want2 = xs.flatMap((row) => leafOut(g, descend(g, row), row, false));
    arr(gy).forEach((v, i) => {
      expect(v).toBeCloseTo(want2[i]!, 5);
    });
    // the routing statistics count tokens per reached leaf
    const ctx = forwardContext(new Rng(0), false);
    f.forward(x, ctx);
    const counts = new Array<number>(8).fill(0);
    for (const l of leaves) counts[l]!++;
    expect(ctx.routing[0]!.counts).toEqual(counts);
    expect(ctx.routing[0]!.expertsPerToken).toBe(1);
  });

  it('node entropies lie in [0, log 2] and minimising the hardening loss drives them down', () => {
    const f = layer({ depth: 2 }, 5);
    const x = input(16, 6);
    const harden = () => {
      const ctx = forwardContext(new Rng(0), true);
      f.forward(x, ctx);
      return ctx.aux.find((a) => a.name === 'fff_harden')!.value;
    };
    const ent0 = arr(
      tf.tidy(() => {
        f.forward(x, forwardContext(new Rng(0), true));
        return f.lastSoft!.entropies.clone();
      }),
    );
    expect(ent0).toHaveLength(3);
    for (const e of ent0) {
      expect(e).toBeGreaterThanOrEqual(0);
      expect(e).toBeLessThanOrEqual(Math.LN2 + 1e-6);
    }
    const start = harden().dataSync()[0]!;
    const opt = tf.train.adam(0.1);
    for (let i = 0; i < 40; i++) opt.minimize(harden, false, [f.nodeWeights!, f.nodeBiases!]);
    const end = harden().dataSync()[0]!;
    expect(start).toBeGreaterThan(0.3);
    expect(end).toBeLessThan(0.5 * start);
  });

  it('balance loss = L · Σ_l f_l P̄_l with f from the hard paths; 1 when the tree is uniform', () => {
    const f = layer({ depth: 2, balanceCoef: 1 }, 7);
    const x = input(10, 8);
    const ctx = forwardContext(new Rng(0), true);
    f.forward(x, ctx);
    const bal = ctx.aux.find((a) => a.name === 'fff_balance')!;
    expect(bal.coef).toBe(1);
    const P = f.lastSoft!.leafProbs.arraySync();
    const leaves = f.lastLeaves!;
    let want = 0;
    for (let l = 0; l < 4; l++) {
      const fl = leaves.filter((v) => v === l).length / 10;
      const pl = P.reduce((s, r) => s + r[l]!, 0) / 10;
      want += fl * pl;
    }
    expect(bal.value.dataSync()[0]!).toBeCloseTo(4 * want, 5);
    f.nodeWeights!.assign(tf.zerosLike(f.nodeWeights!));
    f.nodeBiases!.assign(tf.zerosLike(f.nodeBiases!));
    const c2 = forwardContext(new Rng(0), true);
    f.forward(x, c2);
    expect(c2.aux.find((a) => a.name === 'fff_balance')!.value.dataSync()[0]!).toBeCloseTo(1, 6);
  });

  it('region leak 1 swaps every decision: P_l multiplies (1 − p_n) on right turns and p_n on left turns; inference ignores leaks', () => {
    const f = layer({ depth: 3, regionLeak: 1 });
    const g = layer({ depth: 3 });
    const x = input(4);
    expect(maxAbsDiff(f.forward(x, forwardContext(new Rng(0), false)), g.forward(x, forwardContext(new Rng(0), false)))).toBe(0);
    f.forward(x, forwardContext(new Rng(0), true));
    const leaked = f.lastSoft!.leafProbs.arraySync();
    const p = f.lastSoft!.nodeProbs.arraySync();
    for (let t = 0; t < 4; t++)
      for (let l = 0; l < 8; l++) {
        let node = 0;
        let prob = 1;
        for (let level = 2; level >= 0; level--) {
          const right = (l >> level) & 1;
          prob *= right ? 1 - p[t]![node]! : p[t]![node]!;
          node = 2 * node + 1 + right;
        }
        expect(leaked[t]![l]!).toBeCloseTo(prob, 6);
      }
  });

  it('master leaf: y = κ y_FFF + (1 − κ) y_master with κ = sigmoid(0.5) at init, in both modes', () => {
    const f = layer({ depth: 2, masterLeaf: true });
    const g = layer({ depth: 2 });
    expect(f.masterMix!.dataSync()[0]).toBe(0.5);
    expect(f.parameterCount()).toBe(FFFLayer.parameterCount(d, 2, 4, 8));
    const x = input(5);
    const xs = x.arraySync();
    const kappa = 1 / (1 + Math.exp(-0.5));
    const w1 = f.magicW1!.dataSync();
    const b1 = f.magicB1!.dataSync();
    const w2 = f.magicW2!.dataSync();
    const b2 = f.magicB2!.dataSync();
    const master = (row: number[]) => {
      const h = Array.from({ length: 8 }, (_, j) =>
        Math.max(
          0,
          row.reduce((s, v, i) => s + v * w1[i * 8 + j]!, b1[j]!),
        ),
      );
      return Array.from({ length: d }, (_, o) => h.reduce((s, v, j) => s + v * w2[j * d + o]!, b2[o]!));
    };
    for (const training of [true, false]) {
      const yf = arr(f.forward(x, forwardContext(new Rng(0), training)));
      const yg = arr(g.forward(x, forwardContext(new Rng(0), training)));
      const m = xs.flatMap(master);
      yf.forEach((v, i) => {
        expect(v).toBeCloseTo(kappa * yg[i]! + (1 - kappa) * m[i]!, 5);
      });
    }
  });

  it('finite-difference gradients: soft tree, leaves, master leaf, input, hardening and balance losses', () => {
    const f = layer({ depth: 2, masterLeaf: true, hardeningCoef: 0.5, balanceCoef: 0.3, activation: 'gelu' }, 9);
    const x = tf.variable(input(6, 10));
    const R = input(6, 11);
    const fn = () => {
      const ctx = forwardContext(new Rng(0), true);
      let loss = tf.sum(tf.mul(f.forward(x, ctx), R));
      for (const a of ctx.aux) loss = tf.add(loss, tf.mul(a.value, a.coef));
      return loss as tf.Scalar;
    };
    const errs = directionalGradCheck(fn, [x, ...f.trainableVariables()], new Rng(12), 1e-2);
    expect(errs).toHaveLength(1 + 11);
    for (const e of errs) expect(e).toBeLessThan(2e-2);
  });

  it('masking a leaf removes it: zero contribution, zero gradient for its parameters, and a clear error for a bad id', () => {
    const f = layer({ depth: 2 }, 13);
    const x = input(12, 14);
    const masked = 2;
    const expertMask = new Map([['ffn', new Set([masked])]]);
    const loss = (training: boolean, mask: boolean) => () =>
      tf.sum(tf.square(f.forward(x, forwardContext(new Rng(0), training, mask ? { expertMask } : {})))) as tf.Scalar;
    // training: output = Σ_{l ≠ masked} P_l leaf_l
    const yMasked = f.forward(x, forwardContext(new Rng(0), true, { expertMask }));
    const P = f.lastSoft!.leafProbs.arraySync();
    expect(P.every((r) => r[masked] === 0)).toBe(true);
    const xs = x.arraySync();
    const want = xs.flatMap((row, t) => {
      const acc = new Array<number>(d).fill(0);
      for (let l = 0; l < 4; l++)
        if (l !== masked)
          leafOut(f, l, row).forEach((v, o) => {
            acc[o]! += P[t]![l]! * v;
          });
      return acc;
    });
    arr(yMasked).forEach((v, i) => {
      expect(v).toBeCloseTo(want[i]!, 5);
    });
    const leafVars = [f.w1s, f.b1s, f.w2s, f.b2s];
    const slice = (g: tf.Tensor, l: number) => arr(tf.gather(g, [l]));
    for (const training of [true, false]) {
      const { grads } = tf.variableGrads(loss(training, true), leafVars);
      for (const v of leafVars) {
        expect(slice(grads[v.name]!, masked).every((g) => g === 0)).toBe(true);
      }
      // unmasked leaves still learn
      const { grads: all } = tf.variableGrads(loss(training, false), leafVars);
      expect(slice(all[f.w2s.name]!, masked).some((g) => g !== 0) || !f.lastLeaves!.includes(masked)).toBe(true);
    }
    // inference: tokens that reach the masked leaf get no output
    const yEval = f.forward(x, forwardContext(new Rng(0), false, { expertMask })).arraySync() as number[][];
    const leaves = f.lastLeaves!;
    expect(leaves.includes(masked)).toBe(true);
    leaves.forEach((l, t) => {
      if (l === masked) expect(yEval[t]!.every((v) => v === 0)).toBe(true);
      else
        yEval[t]!.forEach((v, o) => {
          expect(v).toBeCloseTo(leafOut(f, l, xs[t]!)[o]!, 5);
        });
    });
    expect(() => f.forward(x, forwardContext(new Rng(0), true, { expertMask: new Map([['ffn', new Set([4])]]) }))).toThrow(
      /expert mask id 4 is out of range \[0, 4\) for this fff layer/,
    );
  });

  it('active parameters and MACs per token count one root-to-leaf path', () => {
    const f = new FFFLayer(32, { depth: 4, leafWidth: 8 }, new Rng(1));
    expect(f.parameterCount()).toBe(15 * 33 + 16 * (2 * 32 * 8 + 8 + 32));
    expect(f.activeParameterCount()).toBe(4 * 33 + 2 * 32 * 8 + 8 + 32);
    expect(f.macsPerToken(1)).toBe(4 * 32 + 2 * 32 * 8);
  });

  it('a tiny LM with fff feed-forward layers trains from the registry: loss falls', () => {
    const registry = createRegistry(corePlugin, experts, attention);
    const spec = {
      type: 'transformer-lm',
      vocabSize: 16,
      dModel: 16,
      contextLength: 16,
      stack: { groupSize: 1, repeats: 1 },
      block: { type: 'transformer', attention: { type: 'mha', heads: 2 }, ffn: { type: 'fff', depth: 2, leafWidth: 8, hardeningCoef: 0.1, balanceCoef: 0.1 } },
    };
    const model = buildModel(spec, registry, 3);
    const trainer = new Trainer(model, patternSource(16), { batchSize: 8, seqLen: 16, steps: 30, lr: 1e-2, warmup: 3 });
    const first = trainer.trainStep();
    expect(Object.keys(first.aux).sort()).toEqual(['fff_balance', 'fff_harden']);
    let last = first;
    for (let i = 1; i < 30; i++) last = trainer.trainStep();
    expect(last.ce).toBeLessThan(0.6 * first.ce);
  });
});
