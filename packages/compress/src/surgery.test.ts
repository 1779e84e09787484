/**
 * Surgery invariants on a tiny two-layer LM (d 16, 6 SwiGLU experts, top-2): I0.1 slicing ≡ −∞
 * masking with and without renormalisation; I0.2 post-softmax zeroing differs without renormalisation;
 * tokens untouched by pruning keep their output only with renormalisation; REAP's drop-in-place
 * identity; the pruning plan; I0.3 hidden-unit permutation invariance; MC-SMoE binding (a token routed
 * to two members gets both gate weights); SteerMoE force / block; the one-line errors.
 */
import { buildModel, DispatchPlan, forwardContext, type MoELayer, type NodeSpec, Rng, type RouterLogitEdit, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../test/registry.js';
import { windowsLoss } from './windows.js';
import { alignmentPermutation, groupExperts, maxAssignment, mergeExperts, permuteExpert } from './merge.js';
import { RoutingObserver } from './observer.js';
import { planPruning, pruneExperts, superExperts } from './prune.js';
import { planSteering, steerEdits, steerScores } from './steer.js';
import { bindExperts, collapseGroups, logitOverride, maskExperts, type Model, moeLayers, type SpecModel, sliceExperts } from './surgery.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const E = 6;

function lmSpec(renormalize: boolean, expert: Record<string, unknown> = { type: 'glu', hidden: 12 }): Exclude<NodeSpec, string> {
  return {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: 16,
    contextLength: 8,
    stack: { groupSize: 2, repeats: 1 },
    block: {
      type: 'transformer',
      attention: { type: 'mha', heads: 2 },
      ffn: { type: 'moe', experts: E, router: { type: 'softmax-topk', k: 2, renormalize }, expert },
    },
  };
}

function source(renormalize = true, expert?: Record<string, unknown>): SpecModel {
  const spec = lmSpec(renormalize, expert);
  return { spec, model: buildModel<Model>(spec, registry, 7) };
}

const ids = tf.tensor2d(
  Int32Array.from({ length: 3 * 8 }, (_, i) => (i * 11 + 5) % 32),
  [3, 8],
  'int32',
);

function logits(model: Model, edits?: Map<string, RouterLogitEdit>, mask?: Map<string, Set<number>>): Float32Array {
  return tf.tidy(
    () =>
      model
        .forward(ids, forwardContext(new Rng(0), false, { ...(edits ? { routerLogitEdits: edits } : {}), ...(mask ? { expertMask: mask } : {}) }))
        .dataSync() as Float32Array,
  );
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

function calibrate(model: Model, observer = new RoutingObserver(), domain?: string, input = ids): RoutingObserver {
  observer.observe(model, input, { domain });
  return observer;
}

describe('sliceExperts ≡ maskExperts (I0.1)', () => {
  for (const renormalize of [true, false]) {
    it(`renormalize ${renormalize}: the sliced model's logits equal the −∞-masked model's; spec and shapes follow`, () => {
      const src = source(renormalize);
      const keep = new Map([
        ['transformer.layers.0.ffn', [0, 2, 3, 5]],
        ['transformer.layers.1.ffn', [1, 2, 4, 5]],
      ]);
      const sliced = sliceExperts(registry, src, keep);
      const masked = logits(
        src.model,
        new Map([
          ['transformer.layers.0.ffn', maskExperts([1, 4])],
          ['transformer.layers.1.ffn', maskExperts([0, 3])],
        ]),
      );
      expect(maxDiff(logits(sliced.model), masked)).toBeLessThan(1e-5);
      // the test can fail: pruning changes the function
      expect(maxDiff(logits(sliced.model), logits(src.model))).toBeGreaterThan(1e-3);
      expect((sliced.spec as unknown as { block: { ffn: { experts: number } } }).block.ffn.experts).toBe(4);
      const layer = moeLayers(sliced.model)[1]!;
      expect(layer.numExperts).toBe(4);
      const w = (layer.layer.router as unknown as { weight: tf.Variable }).weight;
      const w0 = (moeLayers(src.model)[1]!.layer.router as unknown as { weight: tf.Variable }).weight;
      expect(Array.from(w.dataSync())).toEqual(Array.from(tf.gather(w0, [1, 2, 4, 5]).dataSync()));
    });
  }

  it('different counts per layer rewrite the spec into per-block `blocks`', () => {
    const src = source();
    const sliced = sliceExperts(
      registry,
      src,
      new Map([
        ['transformer.layers.0.ffn', [0, 1, 2]],
        ['transformer.layers.1.ffn', [0, 1, 2, 3, 4]],
      ]),
    );
    const spec = sliced.spec as unknown as { blocks: { ffn: { experts: number } }[]; block?: unknown };
    expect(spec.block).toBeUndefined();
    expect(spec.blocks.map((b) => b.ffn.experts)).toEqual([3, 5]);
    expect(moeLayers(sliced.model).map((l) => l.numExperts)).toEqual([3, 5]);
  });

  it('I0.2: zeroing pruned experts after the softmax equals slicing only with renormalisation; untouched tokens keep their output only then', () => {
    for (const renormalize of [true, false]) {
      const src = source(renormalize);
      const path = 'transformer.layers.0.ffn';
      const layer = moeLayers(src.model)[0]!.layer;
      const x = tf.randomNormal([40, 16], 0, 1, 'float32', 3) as tf.Tensor2D;
      const sliced = sliceExperts(registry, src, new Map([[path, [0, 1, 2, 3]]]));
      const slicedLayer = moeLayers(sliced.model)[0]!.layer;
      const run = (l: MoELayer) => tf.tidy(() => l.forward(x, forwardContext(new Rng(0), false)).arraySync() as number[][]);
      const ySliced = run(slicedLayer);
      const yFull = run(layer);
      // Post-softmax zeroing: top-2 of p with p_4 = p_5 = 0, weights p (renormalised over the 2 when the router renormalises).
      const W = (layer.router as unknown as { weight: tf.Variable }).weight;
      const p = tf.softmax(tf.matMul(x, W, false, true)).arraySync() as number[][];
      const tok: number[] = [];
      const ex: number[] = [];
      const g: number[] = [];
      let untouched = 0;
      let untouchedSame = 0;
      p.forEach((row, t) => {
        const orig = row
          .map((v, e) => [v, e] as const)
          .sort((a, b) => b[0] - a[0])
          .slice(0, 2);
        const z = row.map((v, e) => (e >= 4 ? 0 : v));
        const top = z
          .map((v, e) => [v, e] as const)
          .sort((a, b) => b[0] - a[0])
          .slice(0, 2);
        const s = top[0]![0] + top[1]![0];
        for (const [v, e] of top) {
          tok.push(t);
          ex.push(e);
          g.push(renormalize ? v / s : v);
        }
        if (orig.every(([, e]) => e < 4)) {
          untouched++;
          if (ySliced[t]!.every((v, j) => Math.abs(v - yFull[t]![j]!) < 1e-5)) untouchedSame++;
        }
      });
      const zeroed = tf.tidy(
        () =>
          layer.experts
            .apply(x, new DispatchPlan(Int32Array.from(tok), Int32Array.from(ex), 40, E), tf.tensor1d(g), forwardContext(new Rng(0), false))
            .arraySync() as number[][],
      );
      const diff = Math.max(...zeroed.flatMap((r, t) => r.map((v, j) => Math.abs(v - ySliced[t]![j]!))));
      expect(untouched).toBeGreaterThan(0);
      if (renormalize) {
        expect(diff).toBeLessThan(1e-5);
        expect(untouchedSame).toBe(untouched);
      } else {
        expect(diff).toBeGreaterThan(1e-3);
        expect(untouchedSame).toBe(0);
      }
    }
  });
});

describe('pruning', () => {
  it("REAP's drop-in-place identity: mean over T_j of ‖y − y without expert j's term‖ equals REAP(j)", () => {
    const src = source(false);
    const path = 'transformer.layers.1.ffn';
    const observer = calibrate(src.model);
    const reap = observer.layer(path).reap();
    // Layer input of the calibration pass, captured through the observer hook.
    let x: tf.Tensor2D | undefined;
    tf.tidy(() => {
      src.model.forward(
        ids,
        forwardContext(new Rng(0), false, {
          moeObserver: (ev) => {
            if (ev.layer === path) x = tf.keep(ev.x.clone());
          },
        }),
      );
    });
    const layer = moeLayers(src.model)[1]!.layer;
    for (const j of [0, 3]) {
      const full = tf.tidy(() => layer.forward(x!, forwardContext(new Rng(0), false)).arraySync() as number[][]);
      const ctx = forwardContext(new Rng(0), false, { expertMask: new Map([[path, new Set([j])]]), assignments: new Map() });
      const dropped = tf.tidy(() => layer.forward(x!, ctx).arraySync() as number[][]);
      const plainCtx = forwardContext(new Rng(0), false, { assignments: new Map() });
      tf.tidy(() => layer.forward(x!, plainCtx));
      const call = plainCtx.assignments!.get(path)![0]!;
      const routed = new Set<number>();
      call.expertIndex.forEach((e, n) => {
        if (e === j) routed.add(call.tokenIndex[n]!);
      });
      expect(routed.size).toBeGreaterThan(0);
      let sum = 0;
      for (const t of routed) sum += Math.hypot(...full[t]!.map((v, i) => v - dropped[t]![i]!));
      expect(sum / routed.size).toBeCloseTo(reap[j]!, 4);
    }
  });

  it('keeps E − round(ratio·E) experts per layer, the highest scores; random is seeded; super experts are protected', () => {
    const src = source();
    const observer = calibrate(src.model);
    const plan = planPruning(observer, src, { method: 'frequency', ratio: 0.5 });
    for (const [path, keep] of plan.keep) {
      expect(keep).toHaveLength(3);
      const counts = observer.layer(path).count;
      const minKept = Math.min(...keep.map((e) => counts[e]!));
      for (let e = 0; e < E; e++) if (!keep.includes(e)) expect(counts[e]!).toBeLessThanOrEqual(minKept);
    }
    const r1 = planPruning(observer, src, { method: 'random', ratio: 0.5, seed: 1 });
    expect(planPruning(observer, src, { method: 'random', ratio: 0.5, seed: 1 }).keep).toEqual(r1.keep);
    const pruned = pruneExperts(registry, observer, src, { method: 'reap', ratio: 1 / 3 });
    expect(moeLayers(pruned.model).map((l) => l.numExperts)).toEqual([4, 4]);
    expect(Number.isFinite(logits(pruned.model)[0]!)).toBe(true);
    // An injected outlier expert (W2 scaled by 100) is the super expert, kept by preserveSuper.
    const bank = moeLayers(src.model)[0]!.layer.experts as unknown as { w2: tf.Variable };
    const scale = Float32Array.from({ length: E }, (_, e) => (e === 2 ? 100 : 1));
    bank.w2.assign(tf.mul(bank.w2, tf.tensor3d(scale, [E, 1, 1])));
    const obs2 = calibrate(src.model);
    const paths = moeLayers(src.model).map((l) => l.path);
    expect(superExperts(obs2, paths)).toEqual(new Map([['transformer.layers.0.ffn', [2]]]));
    const guarded = planPruning(obs2, src, { method: 'frequency', ratio: 0.84, preserveSuper: true });
    expect(guarded.keep.get('transformer.layers.0.ffn')).toContain(2);
  });

  it('super experts: removing the flagged outlier expert changes the loss more than removing any other single expert', () => {
    const src = source();
    const path = 'transformer.layers.0.ffn';
    const bank = moeLayers(src.model)[0]!.layer.experts as unknown as { w2: tf.Variable };
    bank.w2.assign(
      tf.mul(
        bank.w2,
        tf.tensor3d(
          Float32Array.from({ length: E }, (_, e) => (e === 4 ? 100 : 1)),
          [E, 1, 1],
        ),
      ),
    );
    const windows = Array.from({ length: 4 }, (_, w) => Int32Array.from({ length: 9 }, (_, i) => (w * 7 + i * 5 + 2) % 32));
    const flagged = superExperts(
      calibrate(src.model),
      moeLayers(src.model).map((l) => l.path),
    );
    expect(flagged).toEqual(new Map([[path, [4]]]));
    const base = windowsLoss(src.model, windows, 8);
    const delta = Array.from({ length: E }, (_, e) => Math.abs(windowsLoss(src.model, windows, 8, new Map([[path, maskExperts([e])]])) - base));
    const others = Math.max(...delta.filter((_, e) => e !== 4));
    expect(delta[4]!).toBeGreaterThan(others);
  });

  it('one-line errors: a ratio leaving fewer experts than top-k, a ratio out of range, a layer without experts', () => {
    const src = source();
    const observer = calibrate(src.model);
    expect(() => pruneExperts(registry, observer, src, { method: 'reap', ratio: 0.9 })).toThrow(
      /1 experts would be left in this layer, fewer than the router's top-k = 2; keep at least 2/,
    );
    expect(() => planPruning(observer, src, { method: 'reap', ratio: 1 })).toThrow(/the pruning ratio must be in \(0, 1\), got 1/);
    expect(() => sliceExperts(registry, src, new Map([['transformer.layers.0.attention', [0]]]))).toThrow(
      /layer "transformer.layers.0.attention" \(MultiHeadAttention\) has no routed experts/,
    );
    const dense = { spec: { ...lmSpec(true), block: { type: 'transformer', ffn: { type: 'dense', hidden: 8 } } } as NodeSpec } as SpecModel;
    dense.model = buildModel<Model>(dense.spec, registry, 0);
    expect(() => planPruning(calibrate(dense.model), dense, { method: 'reap', ratio: 0.5 })).toThrow(/the model has no moe layer with routed experts to prune/);
    expect(() => mergeExperts(registry, calibrate(dense.model), dense, { groups: 2 })).toThrow(/the model has no moe layer with routed experts to merge/);
  });
});

describe('merging (MC-SMoE)', () => {
  it('maxAssignment finds the optimal permutation (brute force on 5 × 5)', () => {
    const rng = new Rng(4);
    const n = 5;
    const s = Float64Array.from({ length: n * n }, () => rng.next());
    const best = maxAssignment(s, n);
    const value = (p: ArrayLike<number>) => Array.from(p).reduce((a, j, i) => a + s[i * n + j]!, 0);
    const perms = (xs: number[]): number[][] => (xs.length <= 1 ? [xs] : xs.flatMap((x) => perms(xs.filter((y) => y !== x)).map((p) => [x, ...p])));
    const top = Math.max(...perms([0, 1, 2, 3, 4]).map(value));
    expect(value(best)).toBeCloseTo(top, 10);
    expect(new Set(best).size).toBe(n);
  });

  it('I0.3: permuting an expert’s hidden units leaves its function unchanged; alignment recovers a permuted copy', () => {
    const src = source();
    const bank = moeLayers(src.model)[0]!.layer.experts as unknown as { w1: tf.Variable; w2: tf.Variable; w3: tf.Variable };
    const perm = Int32Array.from([3, 0, 11, 5, 1, 9, 2, 7, 4, 10, 6, 8]);
    const p = permuteExpert(bank, 1, perm);
    const x = tf.randomNormal([5, 16], 0, 1, 'float32', 9) as tf.Tensor2D;
    const f = (w1: tf.Tensor2D, w3: tf.Tensor2D, w2: tf.Tensor2D) =>
      tf.matMul(tf.mul(tf.mul(tf.matMul(x, w1), tf.sigmoid(tf.matMul(x, w1))), tf.matMul(x, w3)), w2).dataSync() as Float32Array;
    const one = (w: tf.Variable) => tf.squeeze(tf.gather(w, [1]), [0]) as tf.Tensor2D;
    expect(maxDiff(f(p.w1, p.w3!, p.w2), f(one(bank.w1), one(bank.w3), one(bank.w2)))).toBeLessThan(1e-5);
    // Make expert 4 a permuted copy of expert 1: alignment finds the inverse permutation exactly.
    const set = (w: tf.Variable, t: tf.Tensor2D) =>
      w.assign(tf.concat([tf.slice(w, [0, 0, 0], [4, -1, -1]), tf.expandDims(t, 0), tf.slice(w, [5, 0, 0], [1, -1, -1])], 0));
    set(bank.w1, p.w1);
    set(bank.w3, p.w3!);
    set(bank.w2, p.w2);
    const back = alignmentPermutation(bank, 1, 4);
    const aligned = permuteExpert(bank, 4, back);
    expect(maxDiff(aligned.w1.dataSync() as Float32Array, one(bank.w1).dataSync() as Float32Array)).toBeLessThan(1e-6);
  });

  it('groups are the G most used experts plus their most similar members; binding keeps every router row, #distinct experts = G', () => {
    expect(groupExperts([0.4, 0.1, 0.3, 0.2], [1, 0, 0.9, 0.1, 0, 1, 0.2, 0.8, 0.9, 0.2, 1, 0, 0.1, 0.8, 0, 1], 4, 2)).toEqual([
      [0, 3],
      [2, 1],
    ]);
    const src = source();
    const observer = calibrate(src.model);
    const report = mergeExperts(registry, observer, src, { groups: 3 });
    for (const l of moeLayers(src.model)) {
      const w1 = (l.layer.experts as unknown as { w1: tf.Variable }).w1.arraySync() as number[][][];
      const distinct = new Set(w1.map((m) => JSON.stringify(m)));
      expect(distinct.size).toBe(3);
      expect(report.groups.get(l.path)!.flat().sort()).toEqual([0, 1, 2, 3, 4, 5]);
      expect(l.numExperts).toBe(E);
    }
  });

  it('merging a group of identical experts is lossless; a token routed to two members gets both gate weights', () => {
    const src = source();
    const path = 'transformer.layers.0.ffn';
    const layer = moeLayers(src.model)[0]!.layer;
    const bank = layer.experts as unknown as { w1: tf.Variable; w2: tf.Variable; w3: tf.Variable };
    // Experts 1 and 3 identical: binding {1, 3} changes nothing.
    for (const w of [bank.w1, bank.w2, bank.w3]) {
      const parts = tf.unstack(w);
      parts[3] = parts[1]!;
      w.assign(tf.stack(parts));
    }
    const before = logits(src.model);
    bindExperts(registry, src, path, [[0], [1, 3], [2], [4], [5]], (_g, _n, slices) => tf.addN(slices).div(slices.length));
    expect(maxDiff(logits(src.model), before)).toBeLessThan(1e-5);
    // Bind {0, 1}: a token routed to 0 and 1 gets (g0 + g1)·f_merged(x).
    bindExperts(registry, src, path, [[0, 1], [2], [3], [4], [5]], (_g, _n, slices) => tf.addN(slices).div(slices.length));
    const x = tf.randomNormal([1, 16], 0, 1, 'float32', 5) as tf.Tensor2D;
    const plan = new DispatchPlan(Int32Array.from([0, 0]), Int32Array.from([0, 1]), 1, E);
    const ctx = forwardContext(new Rng(0), false);
    const both = layer.experts.apply(x, plan, tf.tensor1d([0.3, 0.5]), ctx);
    const single = layer.experts.apply(x, new DispatchPlan(Int32Array.from([0]), Int32Array.from([0]), 1, E), tf.tensor1d([0.8]), ctx);
    expect(maxDiff(both.dataSync() as Float32Array, single.dataSync() as Float32Array)).toBeLessThan(1e-6);
  });

  it('collapseGroups: fewer router rows by an explicit rule; a singleton partition with `first` is the identity', () => {
    const src = source();
    const path = 'transformer.layers.1.ffn';
    const singletons = collapseGroups(registry, src, new Map([[path, [[0], [1], [2], [3], [4], [5]]]]), { rule: 'first' });
    expect(maxDiff(logits(singletons.model), logits(src.model))).toBeLessThan(1e-6);
    const pairs = collapseGroups(
      registry,
      src,
      new Map([
        [
          path,
          [
            [0, 1],
            [2, 3],
            [4, 5],
          ],
        ],
      ]),
      { rule: 'mean' },
    );
    const w = (moeLayers(pairs.model)[1]!.layer.router as unknown as { weight: tf.Variable }).weight.arraySync() as number[][];
    const w0 = (moeLayers(src.model)[1]!.layer.router as unknown as { weight: tf.Variable }).weight.arraySync() as number[][];
    expect(w).toHaveLength(3);
    for (const [j, v] of w[1]!.entries()) expect(v).toBeCloseTo((w0[2]![j]! + w0[3]![j]!) / 2, 6);
    expect(() =>
      collapseGroups(
        registry,
        src,
        new Map([
          [
            path,
            [
              [0, 1],
              [1, 2, 3, 4, 5],
            ],
          ],
        ]),
        { rule: 'mean' },
      ),
    ).toThrow(/expert 1 is in two groups/);
  });
});

describe('steering (SteerMoE)', () => {
  it('forced experts are in every token’s top-k, blocked ones never; empty sets change nothing', () => {
    const src = source();
    const path = 'transformer.layers.0.ffn';
    const run = (edit: RouterLogitEdit) => {
      const ctx = forwardContext(new Rng(0), false, { routerLogitEdits: new Map([[path, edit]]), assignments: new Map() });
      tf.tidy(() => {
        src.model.forward(ids, ctx);
      });
      return ctx.assignments!.get(path)![0]!;
    };
    const forced = run(logitOverride([4, 1], []));
    for (let t = 0; t < forced.tokens; t++) {
      const mine = Array.from(forced.expertIndex).filter((_, n) => forced.tokenIndex[n] === t);
      expect(mine.sort()).toEqual([1, 4]);
    }
    const blocked = run(logitOverride([], [0, 2, 3]));
    expect(Array.from(blocked.expertIndex).some((e) => [0, 2, 3].includes(e))).toBe(false);
    expect(maxDiff(logits(src.model, new Map([[path, logitOverride([], [])]])), logits(src.model))).toBe(0);
  });

  it('detection ranks experts by the activation-rate difference; the plan forces at most k per layer', () => {
    const src = source();
    const observer = new RoutingObserver({ outputs: false, inputs: false });
    const a = tf.tensor2d(
      Int32Array.from({ length: 24 }, (_, i) => i % 5),
      [3, 8],
      'int32',
    );
    const b = tf.tensor2d(
      Int32Array.from({ length: 24 }, (_, i) => 20 + (i % 7)),
      [3, 8],
      'int32',
    );
    calibrate(src.model, observer, 'a', a);
    calibrate(src.model, observer, 'b', b);
    const scores = steerScores(observer, 'a', 'b');
    expect(scores).toHaveLength(2 * E);
    const s0 = observer.layer('transformer.layers.0.ffn');
    const first = scores.find((s) => s.layer === 'transformer.layers.0.ffn' && s.expert === 0)!;
    expect(first.delta).toBeCloseTo(s0.domainCounts.get('a')![0]! / 24 - s0.domainCounts.get('b')![0]! / 24, 12);
    const topK = new Map(moeLayers(src.model).map((l) => [l.path, 2]));
    const file = planSteering(scores, 'a', 'b', { activate: 12, deactivate: 1, topK });
    for (const l of Object.values(file.layers)) expect(l.force.length).toBeLessThanOrEqual(2);
    const best = scores.slice().sort((x, y) => y.delta - x.delta)[0]!;
    expect(file.layers[best.layer]!.force).toContain(best.expert);
    expect(steerEdits(file).size).toBe(Object.keys(file.layers).length);
    expect(() => steerScores(observer, 'a', 'c')).toThrow(/no calibration tokens were observed under "c"/);
  });

  it('a router that does not take logit edits is refused, not silently unedited', () => {
    const spec = {
      ...lmSpec(true),
      block: { type: 'transformer', ffn: { type: 'moe', experts: 4, router: { type: 'hash' }, expert: { type: 'mlp', hidden: 8 } } },
    } as NodeSpec;
    const model = buildModel<Model>(spec, registry, 0);
    expect(() => logits(model, new Map([['transformer.layers.0.ffn', maskExperts([1])]]))).toThrow(/router HashRouter does not take router-logit edits/);
  });
});
