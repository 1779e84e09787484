import { forwardContext, Rng, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeRouter } from '../test/helpers.js';
import { NexusRouter } from './nexus.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const silu = (v: number) => v / (1 + Math.exp(-v));

/** e_i = SwiGLU(d_i W1) W2 in plain JS. */
function expertEmbeddings(r: NexusRouter): number[][] {
  const D = r.domainEmbeddings.arraySync() as number[][];
  const W1 = r.proj1.arraySync() as number[][];
  const W2 = r.proj2.arraySync() as number[][];
  const h = r.options.hidden;
  return D.map((di) => {
    const u = W1[0]!.map((_, j) => di.reduce((s, v, a) => s + v * W1[a]![j]!, 0));
    const g = Array.from({ length: h }, (_, j) => silu(u[j]!) * u[h + j]!);
    return W2[0]!.map((_, c) => g.reduce((s, v, j) => s + v * W2[j]![c]!, 0));
  });
}

describe('nexus-projection', () => {
  it('routes each token top-1 by x·SwiGLU(d_i W1) W2 with the raw softmax probability as weight', () => {
    const r = makeRouter<NexusRouter>({ type: 'nexus-projection', embeddingDim: 5, hidden: 6 }, 8, 3);
    r.proj2.assign(tf.randomNormal([6, 8], 0, 0.5, 'float32', 3)); // a non-uniform router
    const x = tf.randomNormal([7, 8], 0, 1, 'float32', 4) as tf.Tensor2D;
    const res = r.route(x, forwardContext(new Rng(0), false));
    const E = expertEmbeddings(r);
    const X = x.arraySync();
    const w = res.weight!.dataSync();
    for (let t = 0; t < 7; t++) {
      const z = E.map((e) => e.reduce((s, v, c) => s + v * X[t]![c]!, 0));
      const best = z.indexOf(Math.max(...z));
      const p = Math.exp(z[best]!) / z.reduce((s, v) => s + Math.exp(v), 0);
      expect(res.plan.expertIndex[t]).toBe(best);
      expect(w[t]).toBeCloseTo(p, 5);
    }
    expect(r.namedBuffers().map(([n]) => n)).toEqual(['domain_embeddings']);
  });

  it('appending a domain embedding needs no new parameters: tokens that do not pick the new expert keep theirs, and gates only shrink', () => {
    const r = makeRouter<NexusRouter>({ type: 'nexus-projection' }, 8, 3);
    r.proj2.assign(tf.randomNormal([8, 8], 0, 0.5, 'float32', 5));
    const grown = new NexusRouter(8, 4, r.options, new Rng(1));
    grown.proj1.assign(r.proj1);
    grown.proj2.assign(r.proj2);
    grown.domainEmbeddings.assign(tf.concat([r.domainEmbeddings, tf.randomNormal([1, 8], 0, 1, 'float32', 6)]));
    const x = tf.randomNormal([40, 8], 0, 1, 'float32', 7) as tf.Tensor2D;
    const ctx = forwardContext(new Rng(0), false);
    const before = r.route(x, ctx);
    const after = grown.route(x, ctx);
    const wb = before.weight!.dataSync();
    const wa = after.weight!.dataSync();
    let kept = 0;
    for (let t = 0; t < 40; t++) {
      if (after.plan.expertIndex[t] === 3) continue;
      kept++;
      expect(after.plan.expertIndex[t]).toBe(before.plan.expertIndex[t]);
      expect(wa[t]).toBeLessThanOrEqual(wb[t]! + 1e-7);
    }
    expect(kept).toBeGreaterThan(0);
  });

  it('trains the projection, never the domain embeddings; pushes the Switch balance loss (0.05) in training', () => {
    const r = makeRouter<NexusRouter>({ type: 'nexus-projection' }, 8, 4);
    const x = tf.randomNormal([16, 8], 0, 1, 'float32', 8) as tf.Tensor2D;
    const ctx = forwardContext(new Rng(0), true);
    const { grads } = tf.variableGrads(() => {
      const res = r.route(x, ctx);
      return tf.add(tf.sum(res.weight!), tf.mul(ctx.aux[0]!.value, ctx.aux[0]!.coef)) as tf.Scalar;
    }, r.trainableVariables());
    expect(Object.keys(grads).length).toBe(2);
    expect(r.domainEmbeddings.trainable).toBe(false);
    expect(ctx.aux.map((a) => [a.name, a.coef])).toEqual([['switch_balance', 0.05]]);
    expect(() => makeRouter({ type: 'nexus-projection', renormalize: true }, 8, 4)).toThrow(/k = 1 with renormalize/);
    expect(() => makeRouter({ type: 'nexus-projection', domainCentre: [0, 1, 2] }, 8, 4)).toThrow(/domainCentre has 3 entries, the domain embeddings 8/);
    expect(makeRouter({ type: 'nexus-projection', domainCentre: new Array(8).fill(0.5) }, 8, 4)).toBeDefined();
  });
});
