import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lossRatio, makeRouter, tinyLM, trainLosses } from '../test/helpers.js';
import { buildMasks, type MaskMoERouter } from './maskmoe.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

// 16 ids; ids 0..3 are the frequent quarter
const frequencies = Array.from({ length: 16 }, (_, v) => (v < 4 ? 1000 - v : 10 + v));
const node = { type: 'maskmoe', frequentFraction: 0.25, visibleExperts: 3, frequencies };

describe('maskmoe router', () => {
  it('rare ids see exactly one expert, the most frequent ids `visibleExperts`', () => {
    const m = buildMasks(frequencies, 4, 0.25, 3, 7);
    for (let v = 0; v < 16; v++) {
      const n = Array.from(m.slice(v * 4, v * 4 + 4)).reduce((a, b) => a + b, 0);
      expect(n, `id ${v}`).toBe(v < 4 ? 3 : 1);
    }
  });

  it('a masked expert is never selected; rare ids always use their single visible expert with weight 1', () => {
    const r = makeRouter<MaskMoERouter>(node, 6, 4, { vocabSize: 16 });
    const ids = Int32Array.from({ length: 48 }, (_, i) => i % 16);
    const x = tf.tensor2d(new Rng(1).normalArray(48 * 6, 3), [48, 6]);
    const { plan, weight } = r.route(x, forwardContext(new Rng(1), true, { tokenIds: ids }));
    const w = weight!.dataSync();
    const per = new Array(48).fill(0);
    for (let n = 0; n < plan.size; n++) {
      const t = plan.tokenIndex[n]!;
      const id = ids[t]!;
      expect(r.masks[id * 4 + plan.expertIndex[n]!], `token ${t}`).toBe(1);
      per[t]++;
      if (id >= 4) expect(w[n]).toBeCloseTo(1, 6);
    }
    for (let t = 0; t < 48; t++) expect(per[t]).toBe(ids[t]! < 4 ? 2 : 1);
  });

  it('errors: missing token ids; visibleExperts > E, k > E, missing required options, frequencies ≠ vocabSize (JSON path)', () => {
    const r = makeRouter<MaskMoERouter>(node, 6, 4, { vocabSize: 16 });
    expect(() => r.route(tf.zeros([2, 6]) as tf.Tensor2D, forwardContext(new Rng(1), false))).toThrow(/needs the token ids/);
    expect(() => makeRouter({ ...node, visibleExperts: 5 }, 6, 4)).toThrow(/\$\.block\.ffn\.router\.visibleExperts: visibleExperts = 5 exceeds/);
    expect(() => makeRouter({ ...node, k: 5 }, 6, 4)).toThrow(/\$\.block\.ffn\.router\.k: k = 5 exceeds/);
    expect(() => makeRouter({ type: 'maskmoe', frequencies }, 6, 4)).toThrow(/\$\.block\.ffn\.router/);
    expect(() => makeRouter(node, 6, 4, { vocabSize: 32 })).toThrow(/\$\.block\.ffn\.router\.frequencies: has 16 entries, expected the model's vocabSize = 32/);
  });

  it('a tiny MaskMoE LM learns', () => {
    expect(lossRatio(trainLosses(tinyLM(node)))).toBeLessThan(0.85);
  });
});
