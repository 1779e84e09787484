/**
 * Expert masking for knowledge manipulation: a masked expert gets no assignments and zero gradient under
 * every router and expert layer that can select it; per-domain routing statistics equal a hand count;
 * scores, selection, mask files and masked evaluation.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildModel, buildNode, type ForwardContext, forwardContext, type MoELayer, type NodeSpec, Rng, Trainer, tf } from '@moelab/core';
import type { HashRouter } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Model } from './checkpoint.js';
import { type Corpus, CorpusTokens } from './corpus.js';
import { createDefaultRegistry } from './registry.js';
import {
  checkMask,
  collectDomainRouting,
  domainWindows,
  evaluateDomains,
  evaluateWithMask,
  labelLevel,
  type LayerDomainCounts,
  maskableLayers,
  maskEachDomain,
  maskOf,
  readMaskFile,
  selectExperts,
  specialisationScores,
  writeMaskFile,
} from './specialise.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createDefaultRegistry();
const V = 32;

function lm(ffn: Record<string, unknown>, repeats = 1): NodeSpec {
  return {
    type: 'transformer-lm',
    vocabSize: V,
    dModel: 16,
    contextLength: 8,
    stack: { groupSize: 1, repeats },
    block: { type: 'transformer', attention: { type: 'mha', heads: 2 }, ffn },
  } as NodeSpec;
}

const tokens = tf.tensor2d(
  Int32Array.from({ length: 4 * 8 }, (_, i) => (i * 7 + 3) % V),
  [4, 8],
  'int32',
);
const R = tf.randomNormal([4, 8, V], 0, 1, 'float32', 5);

/** One training-mode forward with the given mask: routing, assignments, and the gradients of `vars`. */
function run(model: Model, vars: tf.Variable[], mask?: Map<string, Set<number>>) {
  const ctx: ForwardContext = forwardContext(new Rng(3), true, { assignments: new Map(), ...(mask ? { expertMask: mask } : {}) });
  const { grads } = tf.variableGrads(() => tf.sum(tf.mul(model.forward(tokens, ctx), R)) as tf.Scalar, vars.length ? vars : model.trainableVariables());
  return { ctx, grads };
}

/** Max |g| over slice `e` of the leading (expert) axis. */
function sliceMax(g: tf.Tensor, e: number): number {
  const s = tf.gather(g, [e]);
  return tf.max(tf.abs(s)).dataSync()[0]!;
}

const E = 4;
const routerOverrides: Record<string, Record<string, unknown>> = {
  'mixture-of-tokens': { groupSize: 4 },
  'soft-moe': { slotsPerExpert: 2 },
  'deepseek-moe': { k: 2 },
  'deepseek-v3': { k: 2 },
  olmoe: { k: 2 },
  maskmoe: { k: 2, frequentFraction: 0.5, visibleExperts: 3, frequencies: Array.from({ length: V }, (_, i) => V - i) },
};

/** A standalone moe layer (outside a causal LM, so the non-causal routers build too) on x [4, 8, 16]. */
function moeRun(layer: MoELayer, vars: tf.Variable[], mask?: Map<string, Set<number>>) {
  const x = tf.randomNormal([4, 8, 16], 0, 1, 'float32', 7);
  const r = tf.randomNormal([4, 8, 16], 0, 1, 'float32', 8);
  const extra: Partial<ForwardContext> = { assignments: new Map(), tokenIds: tokens.dataSync() as Int32Array, ...(mask ? { expertMask: mask } : {}) };
  const ctx = forwardContext(new Rng(3), true, extra);
  const { grads } = tf.variableGrads(() => tf.sum(tf.mul(layer.forward(x, ctx), r)) as tf.Scalar, vars);
  return { ctx, grads };
}

describe('masking removes the experts from every router of the moe layer', () => {
  const routers = registry.list('router').map((e) => e.name);
  it('the registry has the mixing routers too (soft-moe, smear, mixture-of-tokens)', () => {
    expect(routers).toEqual(expect.arrayContaining(['softmax-topk', 'expert-choice', 'hash', 'soft-moe', 'smear', 'mixture-of-tokens']));
    expect(routers.length).toBeGreaterThanOrEqual(15);
  });
  for (const name of routers) {
    it(`${name}: masked expert 1 gets no assignments, no load and zero gradient; it is used without the mask`, () => {
      const moe = buildNode<MoELayer>(
        registry,
        'ffn',
        { type: 'moe', experts: E, router: { type: name, ...(routerOverrides[name] ?? {}) }, expert: { type: 'mlp', hidden: 8 } },
        '$',
        1,
        { dModel: 16, contextLength: 8, vocabSize: V },
      );
      moe.assignPaths('ffn');
      const [layer] = [...maskableLayers(moe).values()];
      expect(layer).toMatchObject({ path: 'ffn', kind: 'moe', numExperts: E });
      const vars = moe.namedParameters().filter(([n, v]) => n.startsWith('experts.') && v.shape[0] === E);
      expect(vars.length).toBeGreaterThan(0);
      const vs = vars.map(([, v]) => v);
      const plain = moeRun(moe, vs);
      const plainStats = plain.ctx.routing.find((s) => s.layer === layer!.path)!;
      const masked = moeRun(moe, vs, new Map([[layer!.path, new Set([1])]]));
      const stats = masked.ctx.routing.find((s) => s.layer === layer!.path)!;
      expect(stats.counts[1]).toBe(0);
      for (const call of masked.ctx.assignments!.get(layer!.path) ?? []) expect(Array.from(call.expertIndex)).not.toContain(1);
      for (const [n, v] of vars) {
        expect(sliceMax(masked.grads[v.name]!, 1), n).toBe(0);
        // the other experts still learn
        expect(Math.max(sliceMax(masked.grads[v.name]!, 0), sliceMax(masked.grads[v.name]!, 2), sliceMax(masked.grads[v.name]!, 3))).toBeGreaterThan(0);
      }
      // the test can fail: without the mask expert 1 works on these tokens
      if (plainStats.counts[1]! > 0) expect(Math.max(...vars.map(([, v]) => sliceMax(plain.grads[v.name]!, 1)))).toBeGreaterThan(0);
    });
  }
});

describe('masking in the other expert layers', () => {
  const cases: [string, Record<string, unknown>, number][] = [
    ['monet-hd', { type: 'monet-hd', experts: 4, expertDim: 4, heads: 2, k: 2, routerGroup: 1 }, 16],
    ['monet-vd', { type: 'monet-vd', experts: 4, expertDim: 4, heads: 2, k: 2, routerGroup: 1 }, 16],
    ['peer', { type: 'peer', experts: 16, heads: 2, k: 2, keyDim: 8 }, 16],
    ['fff', { type: 'fff', depth: 2, leafWidth: 4 }, 4],
    ['sigma-moe', { type: 'sigma-moe', experts: 4, k: 2, expertSize: 4 }, 4],
    ['chain-of-experts', { type: 'chain-of-experts', experts: 4, iterations: 2 }, 4],
  ];
  for (const [name, ffn, N] of cases) {
    it(`${name}: the masked expert gets no assignments and the output changes`, () => {
      const model = buildModel<Model>(lm(ffn), registry, 2);
      const layers = [...maskableLayers(model).values()];
      expect(layers.length).toBeGreaterThan(0);
      const plain = run(model, []);
      // mask the most used expert of each layer
      const mask = new Map<string, Set<number>>();
      for (const l of layers) {
        expect(l.numExperts).toBe(N);
        const counts = plain.ctx.routing.filter((s) => s.layer === l.path).reduce((acc, s) => acc.map((c, e) => c + s.counts[e]!), new Array(N).fill(0));
        const top = counts.indexOf(Math.max(...counts));
        expect(counts[top]).toBeGreaterThan(0);
        mask.set(l.path, new Set([top]));
      }
      checkMask(model, mask);
      const masked = run(model, [], mask);
      for (const [path, ids] of mask) {
        const [id] = [...ids];
        for (const s of masked.ctx.routing.filter((r) => r.layer === path)) expect(s.counts[id!]).toBe(0);
        for (const call of masked.ctx.assignments!.get(path) ?? []) expect(Array.from(call.expertIndex)).not.toContain(id);
      }
      const y0 = model.forward(tokens, forwardContext(new Rng(0), false));
      const y1 = model.forward(tokens, forwardContext(new Rng(0), false, { expertMask: mask }));
      expect(tf.max(tf.abs(tf.sub(y0, y1))).dataSync()[0]!).toBeGreaterThan(1e-6);
    });
  }

  it('peer: the masked expert rows of the down/up tables get zero gradient', () => {
    const model = buildModel<Model>(lm({ type: 'peer', experts: 16, heads: 2, k: 2, keyDim: 8 }), registry, 2);
    const [l] = [...maskableLayers(model).values()];
    const vars = model.namedParameters().filter(([n, v]) => /\.w_(down|up)_embed\.weight$/.test(n) && n.startsWith(`${l!.path}.`) && v.shape[0] === 16);
    expect(vars.length).toBe(2);
    const plain = run(
      model,
      vars.map(([, v]) => v),
    );
    const counts = plain.ctx.routing.find((s) => s.layer === l!.path)!.counts;
    const top = counts.indexOf(Math.max(...counts));
    expect(Math.max(...vars.map(([, v]) => sliceMax(plain.grads[v.name]!, top)))).toBeGreaterThan(0);
    const masked = run(
      model,
      vars.map(([, v]) => v),
      new Map([[l!.path, new Set([top])]]),
    );
    for (const [, v] of vars) expect(sliceMax(masked.grads[v.name]!, top)).toBe(0);
  });

  it('layers that cannot honour a mask, unknown layers and bad ids are rejected with a clear error', () => {
    const aoe = buildModel<Model>(lm({ type: 'aoe', experts: 4, k: 2, rank: 2, hidden: 8 }), registry, 0);
    expect(maskableLayers(aoe).size).toBe(0);
    const path = aoe.modules().find((m) => m.constructor.name === 'AutonomyOfExperts')!.path;
    expect(() => checkMask(aoe, new Map([[path, new Set([0])]]))).toThrow(/\(AutonomyOfExperts\) cannot honour an expert mask; maskable layers: none/);
    const moe = buildModel<Model>(lm({ type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 8 } }), registry, 0);
    const [l] = [...maskableLayers(moe).keys()];
    expect(() => checkMask(moe, new Map([['layers.9.ffn', new Set([0])]]))).toThrow(/the model has no layer "layers.9.ffn"; maskable layers: /);
    expect(() => checkMask(moe, new Map([[l!, new Set([4])]]))).toThrow(/expert id 4 is out of range \[0, 4\) for the moe layer/);
    // the moe layer itself refuses out-of-range ids (route and mix paths)
    expect(() => moe.forward(tokens, forwardContext(new Rng(0), false, { expertMask: new Map([[l!, new Set([7])]]) }))).toThrow(
      /expert mask id 7 is out of range \[0, 4\) for this moe layer/,
    );
  });
});

/** Three domains whose texts use disjoint letters. */
function toyCorpus(): Corpus {
  const text = (letters: string, n: number) => Array.from({ length: n }, (_, i) => letters[(i * 5 + Math.floor(i / 3)) % letters.length]).join('');
  return {
    name: 'toy',
    docs: [
      { id: 'a1', domain: 'alpha/x', split: 'train', text: text('abcdefg', 90) },
      { id: 'a2', domain: 'alpha/y', split: 'train', text: text('abcdefg ', 50) },
      { id: 'a3', domain: 'alpha/x', split: 'val', text: text('gfedcba', 40) },
      { id: 'b1', domain: 'beta', split: 'train', text: text('HIJKLMN', 70) },
      { id: 'b2', domain: 'beta', split: 'val', text: text('NMLKJIH', 40) },
      { id: 'c1', domain: 'gamma', split: 'train', text: text('0123456789', 60) },
      { id: 'c2', domain: 'gamma', split: 'val', text: text('9876543210', 40) },
    ],
  };
}

const hashSpec = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 16,
  contextLength: 8,
  stack: { groupSize: 2, repeats: 1 },
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 32, router: { type: 'hash', hash: 'random' }, expert: { type: 'mlp', hidden: 8 } },
  },
} as NodeSpec;

describe('per-domain routing statistics', () => {
  it('domain labels: whole labels or a "/" prefix level, with the known labels in the error', () => {
    const c = toyCorpus();
    expect(labelLevel(c, 'beta')).toBe(1);
    expect(labelLevel({ name: 't', docs: c.docs.filter((d) => d.domain !== 'alpha/y') }, 'beta')).toBe(1);
    expect(labelLevel(c, 'alpha')).toBe(1);
    expect(labelLevel(c, 'alpha/x')).toBe(2);
    expect(() => labelLevel(c, 'delta')).toThrow(/no document of toy has the domain "delta"; domains: alpha, beta, gamma/);
  });

  it('equal a hand count (hash router: expert = table[token id]) over the windows of each domain', () => {
    const c = toyCorpus();
    const model = buildModel<Model>(hashSpec, registry, 4);
    const routers = model.modules().filter((m) => m.constructor.name === 'HashRouter') as unknown as HashRouter[];
    expect(routers.length).toBe(2);
    const o = { seqLen: 8, level: 1, maxTokens: 48, batchSize: 3 };
    const stats = collectDomainRouting(model, c, { ...o, split: 'train' });
    expect(stats.domains).toEqual(['alpha', 'beta', 'gamma']);
    expect(stats.layers.map((l) => l.layer)).toEqual(routers.map((r) => r.path.replace(/\.router$/, '')));
    stats.domains.forEach((domain, d) => {
      const windows = domainWindows(c, domain, { ...o, split: 'train' });
      // alpha has 140 train bytes + separators: 6 windows of 8 (48-token cap); beta 70+2: 8 -> capped at 6; gamma 62 -> 7 -> 6
      expect(windows.length).toBe(6);
      expect(stats.tokens[d]).toBe(48);
      routers.forEach((r, li) => {
        const hand = new Array(32).fill(0);
        for (const w of windows) for (let t = 0; t < 8; t++) hand[r.table[w[t]!]!]++;
        expect(stats.layers[li]!.counts[d]).toEqual(hand);
        expect(stats.layers[li]!.tokens[d]).toBe(48);
      });
    });
  });

  it('scores: share-ratio and the MONET skew rule on hand numbers; selection by fraction and threshold', () => {
    const layer: LayerDomainCounts = {
      layer: 'l',
      numExperts: 4,
      counts: [
        [30, 10, 0, 0],
        [5, 10, 10, 15],
        [5, 10, 10, 15],
      ],
      tokens: [20, 20, 20],
    };
    const domains = ['a', 'b', 'c'];
    const share = specialisationScores(layer, domains, 'a', 'share-ratio');
    // (c+1)/(40+4) over (rest+1)/(80+4)
    expect(Array.from(share)).toEqual([31 / 44 / (11 / 84), 11 / 44 / (21 / 84), 1 / 44 / (21 / 84), 1 / 44 / (31 / 84)].map((x) => expect.closeTo(x, 12)));
    const diff = specialisationScores(layer, domains, 'a');
    expect(Array.from(diff)).toEqual([0.75 - 10 / 80, 0.25 - 20 / 80, 0 - 20 / 80, 0 - 30 / 80].map((x) => expect.closeTo(x, 12)));
    const skew = specialisationScores(layer, domains, 'a', 'skew');
    expect(Array.from(skew)).toEqual([6, 1, 0, 0]);
    const maskable = new Map([['l', { path: 'l', numExperts: 4, kind: 'moe' as const }]]);
    const stats = { domains, tokens: [20, 20, 20], layers: [layer] };
    // expert 1 has s = 1 exactly (same share on a as elsewhere): not a candidate
    expect(selectExperts(stats, 'a', maskable, { fraction: 0.5 }).layers).toEqual({ l: [0] });
    expect(selectExperts(stats, 'a', maskable, { fraction: 0.25 }).layers).toEqual({ l: [0] });
    expect(selectExperts(stats, 'a', maskable, { score: 'skew', threshold: 2 }).layers).toEqual({ l: [0] });
    expect(selectExperts(stats, 'b', maskable, { score: 'skew', threshold: 1 }).layers).toEqual({ l: [1, 2, 3] });
    // only experts routed to more often on the domain than elsewhere are candidates
    expect(selectExperts(stats, 'b', maskable, { fraction: 1 }).layers.l).not.toContain(0);
    expect(selectExperts(stats, 'a', maskable, { score: 'share-ratio', fraction: 0.5 }).layers).toEqual({ l: [0] });
    // an expert seen once on the domain and never elsewhere wins the ratio, but carries too little of the domain's traffic
    const rare: LayerDomainCounts = {
      layer: 'l',
      numExperts: 4,
      counts: [
        [100, 1, 50, 49],
        [100, 0, 100, 100],
      ],
      tokens: [100, 100],
    };
    const rareStats = { domains: ['a', 'b'], tokens: [100, 100], layers: [rare] };
    const ratio = specialisationScores(rare, ['a', 'b'], 'a', 'share-ratio');
    expect(ratio[1]).toBeGreaterThan(ratio[0]!);
    expect(selectExperts(rareStats, 'a', maskable, { score: 'share-ratio', fraction: 0.25, minShare: 0 }).layers).toEqual({ l: [1] });
    expect(selectExperts(rareStats, 'a', maskable, { score: 'share-ratio', fraction: 0.25 }).layers).toEqual({ l: [0] });
    expect(selectExperts(rareStats, 'a', maskable, { fraction: 0.5 }).layers).toEqual({ l: [0] });
    expect(selectExperts(rareStats, 'a', maskable, { fraction: 0.5, minShare: 0 }).layers).toEqual({ l: [0, 1] });
    // layers that cannot be masked are skipped
    expect(selectExperts(stats, 'a', new Map(), {}).layers).toEqual({});
    expect(() => specialisationScores(layer, domains, 'z')).toThrow(/unknown domain "z"; domains: a, b, c/);
  });
});

describe('masked evaluation and mask files', () => {
  it('evaluateWithMask without a mask equals Trainer.evaluate; masking a domain’s experts changes its perplexity; files round-trip', () => {
    const c = toyCorpus();
    const model = buildModel<Model>(hashSpec, registry, 4);
    const data = new CorpusTokens(c);
    const cfg = { seed: 3, batchSize: 2, seqLen: 8, batches: 2 };
    const ref = new Trainer(model, data, { seed: 3, batchSize: 2, seqLen: 8, evalBatches: 2 }).evaluate();
    expect(evaluateWithMask(model, data, cfg).loss).toBe(ref.loss);
    const o = { seqLen: 8, level: 1, batchSize: 4 };
    const stats = collectDomainRouting(model, c, { ...o, split: 'train' });
    // threshold ∞: only experts that no other domain's token reaches (the hash table decides)
    const file = selectExperts(stats, 'gamma', maskableLayers(model), { score: 'skew', threshold: Number.POSITIVE_INFINITY });
    expect(Object.values(file.layers).flat().length).toBeGreaterThan(0);
    const before = evaluateDomains(model, c, { ...o, split: 'val' });
    const after = evaluateDomains(model, c, { ...o, split: 'val', mask: maskOf(file) });
    expect(before.map((b) => b.domain)).toEqual(['alpha', 'beta', 'gamma']);
    expect(before.every((b) => b.tokens === 40 && Number.isFinite(b.loss))).toBe(true);
    // the hash experts that only gamma's digits reach change gamma's loss and no other domain's
    const g = 2;
    expect(Math.abs(after[g]!.loss - before[g]!.loss)).toBeGreaterThan(1e-6);
    for (const d of [0, 1]) expect(after[d]!.loss).toBeCloseTo(before[d]!.loss, 6);
    expect(evaluateWithMask(model, data, { ...cfg, batches: 16, mask: maskOf(file) }).loss).not.toBe(
      evaluateWithMask(model, data, { ...cfg, batches: 16 }).loss,
    );
    // every domain in turn: only gamma has experts of its own, so only its row changes anything
    const each = maskEachDomain(model, c, { ...o, score: 'skew', threshold: Number.POSITIVE_INFINITY });
    expect(each.baseline.map((b) => b.loss)).toEqual(before.map((b) => b.loss));
    expect(each.effects.map((e) => e.domain)).toEqual(['alpha', 'beta', 'gamma']);
    expect(each.effects[2]).toMatchObject({ maskedExperts: Object.values(file.layers).flat().length, rank: 1, othersMax: 0, othersMean: 0 });
    expect(each.effects[2]!.target).toBeCloseTo(after[g]!.perplexity / before[g]!.perplexity - 1, 12);
    for (const e of each.effects.slice(0, 2)) if (e.maskedExperts === 0) expect(e.target).toBe(0);
    const dir = mkdtempSync(join(tmpdir(), 'moelab-mask-'));
    const saved = { ...file, threshold: 2, data: 'toy' };
    writeMaskFile(join(dir, 'm.json'), saved);
    expect(readMaskFile(join(dir, 'm.json'))).toEqual(saved);
    expect(() => readMaskFile(join(dir, 'none.json'))).toThrow(/no such mask file/);
    expect(() => evaluateDomains(model, c, { ...o, mask: new Map([['x', new Set([0])]]) })).toThrow(/the model has no layer "x"/);
  });
});
