/**
 * The playground's compression path (src/compress.ts, what the Compress section's worker runs) on a
 * trained moe-micro checkpoint: quantization (smaller file, per-expert error monotone in the bits, the
 * packed file loads back through the upload path), pruning (half the experts gone, the scores and the
 * kept set agree), merging (groups, duplicates counted), steering (forced / blocked experts match the
 * steering file, nothing else changes), MoE-Pruner (half of every neuron's weights zeroed, with
 * distillation the same zeros), EEP (search and merging phase: fewer experts, never worse on the
 * search windows than REAP's plan), SCMoE (beta 0 decodes like greedy, the weak routing's shares),
 * and one-line errors for bad input.
 */
import { parseSteerFile, planPruning } from '@moelab/compress';
import { buildModel, type LanguageModel, type Module, resolveBackend, Trainer } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkpointFiles, loadCheckpointFiles } from '../src/checkpoint.js';
import { type CompressMethod, calibrate, compressInPage, PRUNE_SCORES, textWindows, windowsPerplexity } from '../src/compress.js';
import { splitText, TextTokens } from '../src/data.js';
import { createPlaygroundRegistry } from '../src/registry.js';

type Model = Module & LanguageModel;
const registry = createPlaygroundRegistry();
const data = splitText('fox.txt', 'The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. '.repeat(60));

let files: { name: string; bytes: Uint8Array }[];

beforeAll(async () => {
  await resolveBackend('cpu');
  // moe-micro (4 experts, top-2, 2 layers) trained 20 steps, as a run of the page exports it.
  const preset = registry.preset('moe-micro');
  const model = buildModel<Model>(preset.spec, registry, 5);
  const trainer = new Trainer(model, new TextTokens(data), { ...preset.train, batchSize: 4, seqLen: 16, steps: 20, seed: 5 });
  for (let i = 0; i < 20; i++) trainer.trainStep();
  const { configJson, weights } = checkpointFiles(model, { spec: preset.spec, step: 20, seed: 5, train: { ...preset.train, batchSize: 4, seqLen: 16 } });
  model.dispose();
  files = [
    { name: 'config.json', bytes: new TextEncoder().encode(configJson) },
    { name: 'model.safetensors', bytes: weights },
  ];
});

const run = (method: CompressMethod) => compressInPage(registry, { files, method, data, calibTokens: 1024, evalTokens: 1024 });

/** Perplexity of checkpoint files on the same validation windows compressInPage uses. */
function filesPerplexity(f: { name: string; bytes: Uint8Array }[]): number {
  const { model } = loadCheckpointFiles<Model>(f, registry);
  const ppl = windowsPerplexity(model, textWindows(data, 'val', 16, 1024), 8);
  model.dispose();
  return ppl;
}

describe('compression in the playground', () => {
  it('quantizes the routed experts: smaller file, per-expert error grows as bits fall, the packed file loads back', () => {
    const q4 = run({ kind: 'quantize', bits: 4, scope: 'experts' });
    const q2 = run({ kind: 'quantize', bits: 2, scope: 'experts' });
    expect(q4.size.after.parameters).toBe(q4.size.before.parameters);
    expect(q4.size.after.bytes).toBeLessThan(q4.size.before.bytes);
    expect(q2.size.after.bytes).toBeLessThan(q4.size.after.bytes);
    expect(q4.experts.map((l) => l.layer)).toEqual(['transformer.layers.0.ffn', 'transformer.layers.1.ffn']);
    q4.experts.forEach((l, i) => {
      expect(l.values.length).toBe(4);
      l.values.forEach((v, e) => {
        expect(v).toBeGreaterThan(0);
        expect(v).toBeLessThan(q2.experts[i]!.values[e]!);
      });
    });
    expect(q4.perplexity.before).toBeCloseTo(filesPerplexity(files), 5);
    // The downloadable (packed) checkpoint and the float one for a run both give the "after" perplexity.
    expect(new TextDecoder().decode(q4.files[1]!.bytes.subarray(8, 400))).toContain('moelab.quantization');
    expect(filesPerplexity(q4.files)).toBeCloseTo(q4.perplexity.after, 5);
    expect(filesPerplexity(q4.runFiles)).toBeCloseTo(q4.perplexity.after, 5);
    expect(Math.abs(q4.perplexity.after / q4.perplexity.before - 1)).toBeLessThan(0.1);
  });

  it('prunes half the experts by REAP: the lowest scores go, the result is a smaller ordinary checkpoint', () => {
    const r = run({ kind: 'prune', score: 'reap', ratio: 0.5 });
    expect(r.size.after.parameters).toBeLessThan(r.size.before.parameters);
    expect(r.size.after.bytes).toBeLessThan(r.size.before.bytes);
    for (const l of r.experts) {
      expect(l.kept!.filter(Boolean).length).toBe(2);
      const kept = l.values.filter((_, e) => l.kept![e]);
      const removed = l.values.filter((_, e) => !l.kept![e]);
      expect(Math.min(...kept)).toBeGreaterThanOrEqual(Math.max(...removed));
    }
    const { model } = loadCheckpointFiles<Model>(r.runFiles, registry);
    expect(model.parameterCount()).toBe(r.size.after.parameters);
    model.dispose();
    expect(filesPerplexity(r.runFiles)).toBeCloseTo(r.perplexity.after, 5);
  });

  it('every pruning score the section offers plans from the page calibration pass', () => {
    const { model, config } = loadCheckpointFiles<Model>(files, registry);
    const observer = calibrate(model, textWindows(data, 'train', 16, 1024), 8, data.name);
    for (const score of PRUNE_SCORES) {
      const plan = planPruning(observer, { spec: config.spec, model }, { method: score, ratio: 0.5 });
      expect(
        [...plan.keep.values()].map((k) => k.length),
        score,
      ).toEqual([2, 2]);
      expect(
        [...plan.scores.values()].every((v) => v.every(Number.isFinite)),
        score,
      ).toBe(true);
    }
    model.dispose();
  });

  it('merges every layer into 2 groups: same file size, duplicated experts counted, usage sums to 1', () => {
    const r = run({ kind: 'merge', groups: 2 });
    expect(r.size.after.parameters).toBe(r.size.before.parameters);
    expect(r.size.after.distinctParameters).toBeLessThan(r.size.after.parameters);
    for (const l of r.experts) {
      expect(new Set(l.group).size).toBe(2);
      expect(l.values.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    }
    expect(filesPerplexity(r.runFiles)).toBeCloseTo(r.perplexity.after, 5);
  });

  it('steers toward one text and away from another: the largest differences are forced / blocked, the weights stay', () => {
    const other = splitText('abc.txt', 'abcd efgh abcd efgh ijkl. 0123 4567. '.repeat(80));
    const r = run({ kind: 'steer', toward: other, away: data, activate: 2, deactivate: 2 });
    const file = parseSteerFile(new TextDecoder().decode(r.files[0]!.bytes), 'steer.json');
    expect(file.toward).toBe('abc.txt');
    expect(file.away).toBe('fox.txt');
    const all = r.experts.flatMap((l) => l.values.map((delta, e) => ({ layer: l.layer, e, delta, role: l.steer![e] })));
    const forced = all.filter((x) => x.role === 'force');
    const blocked = all.filter((x) => x.role === 'block');
    expect(forced.length + blocked.length).toBeGreaterThan(0);
    for (const f of forced) expect(file.layers[f.layer]!.force).toContain(f.e);
    for (const b of blocked) expect(file.layers[b.layer]!.block).toContain(b.e);
    // Forced: positive Δ, and no unforced expert has a larger Δ than the smallest forced one (ranked over all layers).
    // Blocked: the most negative Δ (k = 2 of 4 experts leaves room for 2 per layer, so no cap binds here).
    for (const f of forced) expect(f.delta).toBeGreaterThan(0);
    for (const b of blocked) expect(b.delta).toBeLessThan(0);
    const rest = all.filter((x) => x.role === null);
    if (forced.length) for (const x of rest) expect(x.delta).toBeLessThanOrEqual(Math.min(...forced.map((f) => f.delta)));
    if (blocked.length) for (const x of rest) expect(x.delta).toBeGreaterThanOrEqual(Math.max(...blocked.map((b) => b.delta)));
    // Nothing but routing changes: same size, no checkpoint for a run; both texts measured with and without the edits.
    expect(r.size.after).toEqual(r.size.before);
    expect(r.runFiles).toEqual([]);
    expect(r.perplexity.data).toBe('abc.txt');
    expect(r.otherPerplexity!.data).toBe('fox.txt');
    expect(r.otherPerplexity!.before).toBeCloseTo(filesPerplexity(files), 5);
    expect(r.perplexity.after).not.toBe(r.perplexity.before);
    expect(() => run({ kind: 'steer', toward: data, away: data, activate: 1, deactivate: 0 })).toThrow(/two different texts/);
    expect(() => run({ kind: 'steer', toward: other, away: data, activate: 0, deactivate: 0 })).toThrow(/nothing to steer/);
  });

  it('MoE-Pruner zeroes half of every expert neuron’s weights; distillation keeps those zeros and the file loads', () => {
    const r = run({ kind: 'moe-pruner', sparsity: 0.5 });
    const kd = run({ kind: 'moe-pruner', sparsity: 0.5, distilSteps: 5 });
    expect(r.size.after.parameters).toBe(r.size.before.parameters);
    expect(r.summary).toMatch(/zeroed [\d,]+ of [\d,]+ expert weights \(50\.0 %/);
    expect(kd.summary).toMatch(/5 steps of expert-wise distillation: loss \S+ -> \S+/);
    expect(kd.size.after.distinctParameters).toBe(r.size.after.distinctParameters);
    for (const l of r.experts) for (const v of l.values) expect(v).toBeGreaterThan(0);
    expect(filesPerplexity(r.runFiles)).toBeCloseTo(r.perplexity.after, 5);
    expect(filesPerplexity(kd.runFiles)).toBeCloseTo(kd.perplexity.after, 5);
  });

  it('EEP keeps half the experts by search (and merging), an ordinary smaller checkpoint', () => {
    // A small search budget: 256 calibration tokens (the search windows) keep the test quick.
    const small = (method: CompressMethod) => compressInPage(registry, { files, method, data, calibTokens: 256, evalTokens: 1024 });
    const r = small({ kind: 'eep', ratio: 0.5, population: 2, generations: 1 });
    const m = small({ kind: 'eep', ratio: 0.5, population: 2, generations: 1, mergeGenerations: 1 });
    for (const x of [r, m]) {
      expect(x.size.after.parameters).toBeLessThan(x.size.before.parameters);
      for (const l of x.experts) expect(l.kept!.filter(Boolean).length).toBe(2);
      expect(filesPerplexity(x.runFiles)).toBeCloseTo(x.perplexity.after, 5);
    }
    const [, start, end] = /merging phase (\S+) -> (\S+)$/.exec(m.summary)!;
    expect(Number(end)).toBeLessThanOrEqual(Number(start));
  });

  it('SCMoE: beta 0 decodes like greedy; the weak routing sends every token to one expert; no weight changes', () => {
    const r = run({ kind: 'scmoe', beta: 0, rank: 2, tokens: 12 });
    expect(r.generated!.contrast).toBe(r.generated!.greedy);
    expect(r.generated!.prompt.length).toBeGreaterThan(0);
    for (const l of r.experts) expect(l.values.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
    expect(r.perplexity.before).toBeCloseTo(filesPerplexity(files), 5);
    expect(r.perplexity.after).not.toBe(r.perplexity.before);
    expect(r.size.after).toEqual(r.size.before);
    expect(r.files).toEqual([]);
    expect(() => run({ kind: 'scmoe', beta: 0.5, rank: 4 })).toThrow(/weak rank 4 needs more than 4 experts/);
  });

  it('refuses bad input in one line', () => {
    expect(() => run({ kind: 'moe-pruner', sparsity: 1 })).toThrow(/sparsity must be in \(0, 1\), got 1/);
    expect(() => run({ kind: 'eep', ratio: 0.5, mergeGenerations: -1 })).toThrow(/merging generations must be a non-negative integer/);
    expect(() => run({ kind: 'scmoe', beta: -1 })).toThrow(/beta must be >= 0/);
    expect(() => run({ kind: 'quantize', bits: 5, scope: 'experts' })).toThrow(/bits must be one of 8, 4, 3, 2 \(got 5\)/);
    expect(() => run({ kind: 'prune', score: 'reap', ratio: 1.5 })).toThrow(/ratio must be in \(0, 1\)/);
    expect(() => run({ kind: 'prune', score: 'reap', ratio: 0.75 })).toThrow(/transformer\.layers\.0\.ffn: 1 experts would be left.*top-k = 2/);
    expect(() => run({ kind: 'merge', groups: 0 })).toThrow(/groups must be a positive integer/);
    expect(() =>
      compressInPage(registry, { files, method: { kind: 'merge', groups: 2 }, data: { name: 'tiny.txt', train: 'x'.repeat(100), val: 'y' } }),
    ).toThrow(/tiny\.txt.*fewer than one window/);
  });
});
