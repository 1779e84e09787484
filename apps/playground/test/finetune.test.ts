/**
 * The playground's fine-tuning path (src/finetune.ts, what the Fine-tune section's worker runs): a base
 * checkpoint as files, an adapter method, the fine-tuning text and the base's domain. Checks the
 * parameter counts against LoRA's formula, that "before" is the base's own perplexity (adapters start as
 * the identity), that the fine-tuning text's perplexity falls while the base stays bitwise unchanged,
 * that the adapter files re-attach to the base through the CLI's loaders and reproduce the fine-tuned
 * logits, and that the folded checkpoint for a run does too (where the adapter can be folded).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildModel, forwardContext, type LanguageModel, type Module, Rng, resolveBackend, Trainer, tf } from '@moelab/core';
import { createDefaultRegistry, loadAdapterCheckpoint, loadCheckpoint } from '@moelab/node';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkpointFiles, loadCheckpointFiles } from '../src/checkpoint.js';
import { splitText, TextTokens } from '../src/data.js';
import { finetuneMethodNames, methodDefaults, PageFinetune, parseOptions } from '../src/finetune.js';
import { createPlaygroundRegistry } from '../src/registry.js';

type Model = Module & LanguageModel;
const registry = createPlaygroundRegistry();
const general = splitText('fox.txt', 'The quick brown fox jumps over the lazy dog. '.repeat(80));
// A very regular text the base has never seen: a few steps of an adapter lower its perplexity clearly.
const target = splitText('abc.txt', 'abcd efgh abcd efgh ijkl. '.repeat(120));
const train = { steps: 12, batchSize: 4, seqLen: 16, lr: 1e-2, evalBatches: 2 };

/** moe-micro trained 3 steps on the fox text, as checkpoint files (what a run exports). */
function baseFiles() {
  const preset = registry.preset('moe-micro');
  const model = buildModel<Model>(preset.spec, registry, 3);
  const trainer = new Trainer(model, new TextTokens(general), { ...preset.train, batchSize: 2, seqLen: 16, steps: 3, seed: 3 });
  for (let i = 0; i < 3; i++) trainer.trainStep();
  const { configJson, weights } = checkpointFiles(model, { spec: preset.spec, step: 3, seed: 3, train: { ...preset.train, batchSize: 2, seqLen: 16 } });
  model.dispose();
  return [
    { name: 'config.json', bytes: new TextEncoder().encode(configJson) },
    { name: 'model.safetensors', bytes: weights },
  ];
}

const probe = () => tf.tensor2d([[97, 98, 99, 100, 32, 101, 102, 103]], [1, 8], 'int32');
const logits = (m: Model) => tf.tidy(() => m.forward(probe(), forwardContext(new Rng(0), false)).dataSync() as Float32Array);
const maxDiff = (a: Float32Array, b: Float32Array) => Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i]!)));
const request = (files: ReturnType<typeof baseFiles>, method: string, options: Record<string, unknown> = {}) => ({
  files,
  source: 'runA@3',
  method,
  options,
  target,
  general,
  train,
});

beforeAll(async () => {
  await resolveBackend('cpu');
});

describe('fine-tuning in the playground', () => {
  it('LoRA: exact counts, before = the base, the target perplexity falls, the base is untouched, the adapter round-trips', () => {
    const files = baseFiles();
    const job = new PageFinetune(registry, request(files, 'lora'));
    // LoRA rank 8 on q_proj and v_proj (32 -> 32) of both layers: 2 layers x 2 x r (d_in + d_out).
    expect(job.counts.trainable).toBe(2 * 2 * 8 * (32 + 32));
    expect(job.counts.added).toBe(job.counts.trainable);
    const { model: base } = loadCheckpointFiles<Model>(files, registry);
    expect(job.counts.frozen).toBe(base.parameterCount());
    expect(job.counts.base).toBe(base.parameterCount());
    // "Before" is the base's perplexity on each domain's validation windows.
    const direct = new Trainer(base, new TextTokens(target), { ...train, seed: 3, steps: 1 }).evaluate();
    expect(job.domains[0]!.before.perplexity).toBeCloseTo(direct.perplexity, 5);
    expect(job.domains.map((d) => [d.role, d.name])).toEqual([
      ['target', 'abc.txt'],
      ['general', 'fox.txt'],
    ]);
    const baseWeights = new Map(base.namedParameters().map(([n, v]) => [n, Float32Array.from(v.dataSync() as Float32Array)]));
    const losses: number[] = [];
    while (!job.done) losses.push(job.step().loss);
    expect(losses.length).toBe(12);
    const [t, g] = job.finish();
    expect(t!.after!.perplexity).toBeLessThan(0.8 * t!.before.perplexity);
    expect(Number.isFinite(g!.after!.perplexity)).toBe(true);
    // Frozen: every base tensor of the fine-tuned model holds the base's bytes.
    for (const [n, v] of job.model.namedParameters()) {
      if (n.startsWith('adapter.')) continue;
      expect(Array.from(v.dataSync() as Float32Array), n).toEqual(Array.from(baseWeights.get(n)!));
    }
    const tuned = logits(job.model);
    const out = job.resultFiles();
    expect(out.map((f) => f.name)).toEqual(['adapter.json', 'adapter.safetensors']);
    const config = JSON.parse(new TextDecoder().decode(out[0]!.bytes));
    expect(config.format).toBe('moelab-adapter-v1');
    expect(config.base.source).toBe('runA@3');
    expect(config.step).toBe(12);
    // LoRA folds into the base: the merged checkpoint a run loads computes the fine-tuned logits.
    const merged = job.mergedFiles();
    job.dispose();
    const { model: folded, config: foldedConfig } = loadCheckpointFiles<Model>(merged, registry);
    expect(foldedConfig.step).toBe(3 + 12);
    expect(maxDiff(logits(folded), tuned)).toBeLessThan(1e-4);
    folded.dispose();
    base.dispose();
    // The downloads, saved as directories, are what the CLI reads: the base checkpoint plus the adapter.
    const dir = mkdtempSync(join(tmpdir(), 'moelab-playground-ft-'));
    try {
      mkdirSync(join(dir, 'base'));
      mkdirSync(join(dir, 'adapter'));
      for (const f of files) writeFileSync(join(dir, 'base', f.name), f.bytes);
      for (const f of out) writeFileSync(join(dir, 'adapter', f.name), f.bytes);
      const cli = createDefaultRegistry();
      const { model } = loadCheckpoint(join(dir, 'base'), cli);
      const { adapted } = loadAdapterCheckpoint(join(dir, 'adapter'), model, cli);
      expect(maxDiff(logits(model), tuned)).toBeLessThan(1e-5);
      adapted.detach();
      model.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a block-parallel adapter (PERFT-S) cannot be folded into the base: the adapter files only, and why', () => {
    const job = new PageFinetune(registry, { ...request(baseFiles(), 'perft-s'), train: { ...train, steps: 1 } });
    job.step();
    expect(job.resultFiles().map((f) => f.name)).toEqual(['adapter.json', 'adapter.safetensors']);
    expect(() => job.mergedFiles()).toThrow(/cannot merge/);
    job.dispose();
  });

  it('full fine-tuning: nothing frozen, the result is an ordinary checkpoint one step further per step', () => {
    const files = baseFiles();
    const job = new PageFinetune(registry, { ...request(files, 'full'), train: { ...train, steps: 2 } });
    expect(job.counts.frozen).toBe(0);
    expect(job.counts.trainable).toBe(job.model.parameterCount());
    job.step();
    job.step();
    job.finish();
    const out = job.resultFiles();
    expect(out.map((f) => f.name)).toEqual(['config.json', 'model.safetensors']);
    const { model, config } = loadCheckpointFiles<Model>(out, registry);
    expect(config.step).toBe(5);
    expect(Array.from(logits(model))).toEqual(Array.from(logits(job.model)));
    model.dispose();
    job.dispose();
  });

  it('offers every method with its defaults and refuses bad input in one line', () => {
    expect(finetuneMethodNames()).toEqual(
      expect.arrayContaining(['lora', 'perft-s', 'perft-d', 'perft-r', 'perft-e', 'smore', 'mov', 'molora', 'mixlora', 'esft', 'full']),
    );
    expect(methodDefaults(registry, 'lora')).toMatchObject({ rank: 8, targets: ['*.attention.q_proj', '*.attention.v_proj'] });
    expect(methodDefaults(registry, 'full')).toEqual({});
    expect(() => methodDefaults(registry, 'lorra')).toThrow(/unknown method "lorra".*lora/);
    expect(() => parseOptions('{ rank: 8 }')).toThrow(/options are not JSON/);
    expect(() => parseOptions('[1]')).toThrow(/must be a JSON object/);
    const files = baseFiles();
    expect(() => new PageFinetune(registry, request(files, 'lora', { targets: ['*.nothing_here'] }))).toThrow(/nothing_here/);
    expect(() => new PageFinetune(registry, request(files, 'full', { rank: 4 }))).toThrow(/takes no adapter options/);
  });
});
