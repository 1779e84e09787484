/**
 * SCMoE on a tiny two-layer LM (d 16, 6 SwiGLU experts, top-2): the weak routing puts weight 1 on the
 * expert at the chosen rank; β = 0 decodes exactly like greedy decoding of the strong pass (cached and
 * not); a weak pass equal to the strong one does too for any β; every chosen token is plausible; the
 * one-line errors.
 */
import { buildModel, forwardContext, generateTokens, type NodeSpec, Rng, selfContrastScores, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../test/registry.js';
import { rankRouting, scmoeContrast } from './scmoe.js';
import { type Model, moeLayers } from './surgery.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const E = 6;

function model(renormalize = true): Model {
  const spec: NodeSpec = {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: 16,
    contextLength: 16,
    stack: { groupSize: 2, repeats: 1 },
    block: {
      type: 'transformer',
      attention: { type: 'mha', heads: 2 },
      ffn: { type: 'moe', experts: E, router: { type: 'softmax-topk', k: 2, renormalize }, expert: { type: 'glu', hidden: 12 } },
    },
  };
  return buildModel<Model>(spec, registry, 11);
}

describe('selfContrastScores', () => {
  it('β = 0 and weak = strong keep the strong argmax; the argmax is always plausible; a strong contrast can change it', () => {
    const rng = new Rng(1);
    let changed = 0;
    for (let trial = 0; trial < 50; trial++) {
      const s = Float32Array.from({ length: 12 }, () => 2 * rng.normal());
      const w = Float32Array.from({ length: 12 }, () => 2 * rng.normal());
      const argmax = (a: ArrayLike<number>) => Array.from(a).reduce((b, v, i, arr) => (v > arr[b]! ? i : b), 0);
      expect(argmax(selfContrastScores(s, w, 0, 0.1))).toBe(argmax(s));
      expect(argmax(selfContrastScores(s, s, 0.9, 0.1))).toBe(argmax(s));
      const c = selfContrastScores(s, w, 0.9, 0.1);
      const v = argmax(c);
      // Plausible: p_v ≥ α · max p, i.e. s_v ≥ log α + max s (logits and log-probabilities differ by a constant).
      expect(s[v]!).toBeGreaterThanOrEqual(Math.log(0.1) + Math.max(...s) - 1e-5);
      if (v !== argmax(s)) changed++;
    }
    expect(changed).toBeGreaterThan(0);
    expect(() => selfContrastScores([0], [0], -1, 0.1)).toThrow(/contrast\.beta: the contrast weight beta must be >= 0, got -1/);
    expect(() => selfContrastScores([0], [0], 0.5, 0)).toThrow(/contrast\.alpha: the plausibility alpha must be in \(0, 1\], got 0/);
  });
});

describe('SCMoE', () => {
  it('the weak routing runs only the expert ranked r, with weight 1', () => {
    const m = model(false);
    const ids = tf.tensor2d([[1, 5, 9, 2, 7, 3, 30, 11]], [1, 8], 'int32');
    const path = 'transformer.layers.0.ffn';
    let ranking: number[][] = [];
    tf.tidy(() => {
      m.forward(
        ids,
        forwardContext(new Rng(0), false, {
          moeObserver: (ev) => {
            if (ev.layer !== path) return;
            const z = ev.routed.logits!.arraySync();
            ranking = z.map((row) => row.map((_, e) => e).sort((a, b) => row[b]! - row[a]! || a - b));
          },
        }),
      );
    });
    for (const rank of [0, 2, 5]) {
      const weight = Array.from({ length: 8 }, () => new Float64Array(E));
      tf.tidy(() => {
        m.forward(
          ids,
          forwardContext(new Rng(0), false, {
            routerLogitEdits: new Map([[path, rankRouting(rank)]]),
            moeObserver: (ev) => {
              if (ev.layer !== path) return;
              const g = ev.weight!.dataSync();
              for (let n = 0; n < ev.plan.size; n++) weight[ev.plan.tokenIndex[n]!]![ev.plan.expertIndex[n]!]! += g[n]!;
            },
          }),
        );
      });
      for (let t = 0; t < 8; t++)
        for (let e = 0; e < E; e++) expect(weight[t]![e], `rank ${rank} token ${t} expert ${e}`).toBeCloseTo(e === ranking[t]![rank] ? 1 : 0, 6);
    }
  });

  it('β = 0 decodes like greedy decoding (cached and uncached); weak = strong too for β = 0.7; every token is plausible', () => {
    const m = model();
    const prompt = [3, 1, 4, 1, 5];
    for (const cache of [true, false]) {
      const greedy = generateTokens(m, prompt, { maxNewTokens: 20, temperature: 0, cache });
      expect(generateTokens(m, prompt, { maxNewTokens: 20, temperature: 0, cache, contrast: scmoeContrast(m, { beta: 0 }) })).toEqual(greedy);
      const identity = new Map(moeLayers(m).map((l) => [l.path, (z: tf.Tensor2D) => z.clone()]));
      expect(generateTokens(m, prompt, { maxNewTokens: 20, temperature: 0, cache, contrast: { routerLogitEdits: identity, beta: 0.7, alpha: 0.1 } })).toEqual(
        greedy,
      );
    }
    const scores: Float32Array[] = [];
    const out = generateTokens(m, prompt, {
      maxNewTokens: 20,
      temperature: 0,
      contrast: scmoeContrast(m, { beta: 0.7, weakRank: 2 }),
      onLogits: (l) => scores.push(l.slice()),
    });
    out.forEach((v, i) => {
      expect(Number.isFinite(scores[i]![v]!)).toBe(true);
    });
    // Sampling works on the −∞-masked scores too.
    expect(generateTokens(m, prompt, { maxNewTokens: 8, temperature: 0.8, seed: 3, contrast: scmoeContrast(m, { beta: 0.5 }) })).toHaveLength(8);
  });

  it('one-line errors: a rank beyond the experts, a negative rank, a model without moe layers', () => {
    const m = model();
    expect(() => scmoeContrast(m, { beta: 0.5, weakRank: 6 })).toThrow(/--scmoe-rank: the weak rank 6 needs more than 6 experts \(ranks are 0-based\)/);
    expect(() => rankRouting(-1)).toThrow(/--scmoe-rank: the weak rank must be a non-negative integer, got -1/);
    const dense = buildModel<Model>(
      {
        type: 'transformer-lm',
        vocabSize: 32,
        dModel: 16,
        contextLength: 8,
        stack: { groupSize: 1, repeats: 1 },
        block: { type: 'transformer', ffn: { type: 'dense', hidden: 8 } },
      },
      registry,
      0,
    );
    expect(() => scmoeContrast(dense, { beta: 0.5 })).toThrow(/--scmoe: self-contrast decoding needs a model with moe layers/);
  });
});
