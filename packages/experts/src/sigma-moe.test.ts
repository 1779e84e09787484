import { buildNode, corePlugin, createRegistry, type FeedForward, forwardContext, type Module, Rng, tf } from '@moelab/core';
import { routers } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import { experts } from './index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, routers, experts);
const build = (spec: Record<string, unknown>, env: Record<string, unknown> = { dModel: 8 }) => {
  const m = buildNode<FeedForward & Module>(registry, 'ffn', { type: 'sigma-moe', ...spec }, '$.block.ffn', 0, env);
  m.assignPaths('ffn');
  return m;
};

function std(a: Float32Array): number {
  const m = a.reduce((s, v) => s + v, 0) / a.length;
  return Math.sqrt(a.reduce((s, v) => s + (v - m) ** 2, 0) / (a.length - 1));
}

describe('sigma-moe', () => {
  it('has the official flat state_dict names and shapes (and router.* / experts.* in the generic moe shell)', () => {
    const m = build({ experts: 6, k: 2, expertSize: 5 });
    expect(Object.fromEntries(m.namedParameters().map(([n, v]) => [n, v.shape]))).toEqual({ expert_sel: [6, 8], keys: [6, 8, 5], values: [6, 5, 8] });
    const generic = buildNode<Module>(
      registry,
      'ffn',
      { type: 'moe', experts: 6, router: { type: 'sigma-topk', k: 2 }, expert: { type: 'sigma-moe', size: 5 } },
      '$',
      0,
      { dModel: 8 },
    );
    expect(generic.namedParameters().map(([n]) => n)).toEqual(['router.expert_sel', 'experts.keys', 'experts.values']);
    // active parameters: router + k experts
    expect(m.activeParameterCount()).toBe(6 * 8 + 2 * 2 * 8 * 5);
  });

  it('MoEUT init: std scale √(2/L) from the model depth', () => {
    const m = build({ experts: 32, k: 2, expertSize: 64 }, { dModel: 64, nLayers: 8 });
    const p = new Map(m.namedParameters());
    const s = Math.sqrt(2 / 8);
    expect(std(p.get('keys')!.dataSync() as Float32Array)).toBeCloseTo(s / 8, 2);
    expect(std(p.get('values')!.dataSync() as Float32Array) / (s / Math.sqrt(32 * 64))).toBeCloseTo(1, 1);
    expect(std(p.get('expert_sel')!.dataSync() as Float32Array) / (s / 8)).toBeCloseTo(1, 1);
  });

  it('rejects k > experts and unknown fields with the JSON path', () => {
    expect(() => build({ experts: 4, k: 5 })).toThrow(/\$\.block\.ffn\.k: k = 5 exceeds the number of experts \(4\)/);
    expect(() => build({ experts: 4, topk: 2 })).toThrow(/\$\.block\.ffn: unknown field "topk"/);
  });

  it('is invariant to permuting experts together with their router rows', () => {
    const rng = new Rng(7);
    const m = build({ experts: 5, k: 2, expertSize: 4 });
    const x = tf.tensor3d(rng.normalArray(2 * 3 * 8), [2, 3, 8]);
    const y0 = m.forward(x, forwardContext(rng, false)).dataSync();
    const perm = [3, 0, 4, 1, 2];
    for (const [, v] of m.namedParameters()) v.assign(tf.gather(v, tf.tensor1d(perm, 'int32')));
    const y1 = m.forward(x, forwardContext(rng, false)).dataSync();
    for (let i = 0; i < y0.length; i++) expect(y1[i]).toBeCloseTo(y0[i]!, 5);
  });

  it('finite-difference gradients of output and regulariser w.r.t. params, expert input and router input', () => {
    const rng = new Rng(11);
    const m = build({ experts: 4, k: 2, expertSize: 6, balanceCoef: 0.5 });
    const x = tf.variable(tf.tensor3d(rng.normalArray(2 * 3 * 8), [2, 3, 8]));
    const s = tf.variable(tf.tensor3d(rng.normalArray(2 * 3 * 8), [2, 3, 8]));
    const R = tf.tensor3d(rng.normalArray(2 * 3 * 8), [2, 3, 8]);
    const loss = () => {
      const ctx = forwardContext(rng, true);
      let l = tf.sum(tf.mul(m.forward(x, ctx, { routerInput: s }), R));
      m.finalizeForward?.(ctx);
      expect(ctx.aux.map((a) => a.name)).toEqual(['entropy_balance']);
      for (const a of ctx.aux) l = tf.add(l, tf.mul(a.value, a.coef));
      return l as tf.Scalar;
    };
    const vars = [x, s, ...m.trainableVariables()];
    const { grads } = tf.variableGrads(loss, vars);
    // Central differences at several step sizes: float32 round-off spoils tiny steps and a ReLU kink or
    // top-k flip can spoil one step; a wrong gradient disagrees at every step.
    const drng = new Rng(12);
    for (const v of vars) {
      const dir = tf.tensor(drng.normalArray(v.size), v.shape);
      const analytic = tf.sum(tf.mul(grads[v.name]!, dir)).dataSync()[0]!;
      const orig = v.clone();
      const errs = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4].map((eps) => {
        v.assign(tf.add(orig, tf.mul(dir, eps)));
        const fp = loss().dataSync()[0]!;
        v.assign(tf.sub(orig, tf.mul(dir, eps)));
        const fm = loss().dataSync()[0]!;
        v.assign(orig);
        return Math.abs(analytic - (fp - fm) / (2 * eps)) / Math.max(Math.abs(analytic), 1e-2);
      });
      expect(Math.min(...errs)).toBeLessThan(5e-3);
    }
  });
});
