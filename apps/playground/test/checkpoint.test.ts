/**
 * The playground's checkpoint code path against the CLI's: files written by the playground
 * (src/checkpoint.ts, the functions its worker calls) load with packages/node's loadCheckpoint, and a
 * CLI checkpoint directory loads through the playground's upload path, with identical logits. Malformed
 * uploads are refused with messages that say what is wrong.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildModel, forwardContext, type LanguageModel, type Module, type Preset, Rng, resolveBackend, tf, Trainer } from '@moelab/core';
import { createDefaultRegistry, loadCheckpoint, saveCheckpoint } from '@moelab/node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointFiles, loadCheckpointFiles, pickCheckpointFiles } from '../src/checkpoint.js';
import { splitText, TextTokens } from '../src/data.js';
import { createPlaygroundRegistry } from '../src/registry.js';

type Model = Module & LanguageModel;
const registry = createPlaygroundRegistry();
const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'moelab-playground-'));
  dirs.push(d);
  return d;
};

function logits(model: Model): Float32Array {
  return tf.tidy(
    () => model.forward(tf.tensor2d([[72, 101, 108, 108, 111, 32, 119]], [1, 7], 'int32'), forwardContext(new Rng(0), false)).dataSync() as Float32Array,
  );
}

const text = 'The quick brown fox jumps over the lazy dog. '.repeat(80);

/** moe-micro, trained 3 steps so that the weights differ from a fresh build with the same seed. */
function trainedMicro(seed: number): { model: Model; spec: Preset['spec'] } {
  const preset = registry.preset('moe-micro');
  const model = buildModel<Model>(preset.spec, registry, seed);
  const trainer = new Trainer(model, new TextTokens(splitText('fox.txt', text)), { ...preset.train, batchSize: 2, seqLen: 16, steps: 3, seed });
  for (let i = 0; i < 3; i++) trainer.trainStep();
  return { model, spec: preset.spec };
}

beforeAll(async () => {
  await resolveBackend('cpu');
});
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('checkpoints: playground <-> CLI', () => {
  it('a playground checkpoint loads with the CLI loader (same logits)', () => {
    const { model, spec } = trainedMicro(7);
    const files = checkpointFiles(model, { spec, step: 3, seed: 7, train: { lr: 0.01, data: 'fox.txt' } });
    const dir = tmp();
    writeFileSync(join(dir, 'config.json'), files.configJson);
    writeFileSync(join(dir, 'model.safetensors'), files.weights);
    const loaded = loadCheckpoint(dir, createDefaultRegistry());
    expect(loaded.config.format).toBe('moelab-checkpoint-v1');
    expect(loaded.config.step).toBe(3);
    expect(loaded.config.train?.data).toBe('fox.txt');
    const a = logits(model);
    const b = logits(loaded.model);
    expect(b.length).toBe(7 * 256);
    let maxDiff = 0;
    for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
    expect(maxDiff).toBe(0);
    // And it differs from a fresh, untrained build with the same seed (the weights really moved).
    const fresh = buildModel<Model>(spec, registry, 7);
    expect(Math.abs(logits(fresh)[0]! - a[0]!)).toBeGreaterThan(0);
    for (const m of [model, loaded.model, fresh]) m.dispose();
  });

  it('a CLI checkpoint loads through the playground upload path (same logits)', () => {
    const { model, spec } = trainedMicro(3);
    const dir = tmp();
    saveCheckpoint(dir, model, { spec, step: 3, seed: 3 });
    const uploads = ['model.safetensors', 'config.json'].map((name) => ({ name, bytes: new Uint8Array(readFileSync(join(dir, name))) }));
    const loaded = loadCheckpointFiles<Model>(uploads, registry);
    expect(loaded.config.step).toBe(3);
    expect(Array.from(logits(loaded.model))).toEqual(Array.from(logits(model)));
    // Files renamed by the browser ("config (1).json", no extension) are recognised by content.
    const renamed = [
      { name: 'weights', bytes: uploads[0]!.bytes },
      { name: 'config (1).json', bytes: uploads[1]!.bytes },
    ];
    const picked = pickCheckpointFiles(renamed);
    expect(picked.weights.name).toBe('weights');
    expect(picked.config.name).toBe('config (1).json');
    model.dispose();
    loaded.model.dispose();
  });

  it('malformed uploads give clear messages', () => {
    const { model, spec } = trainedMicro(1);
    const good = checkpointFiles(model, { spec, step: 3, seed: 1 });
    const enc = new TextEncoder();
    const weights = { name: 'model.safetensors', bytes: good.weights };
    const config = (s: string) => ({ name: 'config.json', bytes: enc.encode(s) });
    const fail = (files: { name: string; bytes: Uint8Array }[]) => {
      try {
        loadCheckpointFiles(files, registry);
      } catch (e) {
        return (e as Error).message;
      }
      throw new Error('expected the upload to be refused');
    };
    expect(fail([])).toMatch(/choose two files: config.json and model.safetensors/);
    expect(fail([config(good.configJson)])).toMatch(/model.safetensors is missing/);
    expect(fail([weights])).toMatch(/config.json is missing/);
    expect(fail([config('{ not json'), weights])).toMatch(/config.json: config.json is not valid JSON/);
    expect(fail([config('[1,2]'), weights])).toMatch(/must hold a JSON object/);
    expect(fail([config('{"format":"pytorch","spec":{}}'), weights])).toMatch(/\$\.format: unknown checkpoint format "pytorch"/);
    expect(fail([config('{"format":"moelab-checkpoint-v1"}'), weights])).toMatch(/\$\.spec: config.json has no "spec"/);
    expect(fail([config('{"format":"moelab-checkpoint-v1","spec":{"type":"transformer-lm"},"tokenizer":"bpe"}'), weights])).toMatch(/unknown tokenizer "bpe"/);
    expect(fail([config(good.configJson.replace('"tokenizer": "byte"', '"tokenizer": "tokenizer.json"')), weights])).toMatch(
      /^config.json: \$\.tokenizer: this checkpoint tokenizes with a Hugging Face tokenizer.json; the playground reads and writes bytes only/,
    );
    expect(fail([config(good.configJson.replace('"softmax-topk"', '"softmax-topkk"')), weights])).toMatch(
      /unknown router "softmax-topkk". Did you mean: softmax-topk/,
    );
    expect(fail([config(good.configJson), { name: 'model.safetensors', bytes: enc.encode('garbage bytes, not safetensors') }])).toMatch(/model.safetensors/);
    // Weights of another model: every mismatch is named.
    const dense = registry.preset('dense-micro');
    const denseModel = buildModel<Model>(dense.spec, registry, 0);
    const denseFiles = checkpointFiles(denseModel, { spec: dense.spec, step: 0, seed: 0 });
    expect(fail([config(good.configJson), { name: 'model.safetensors', bytes: denseFiles.weights }])).toMatch(/missing: .*router/);
    expect(fail([{ name: 'config.json', bytes: Uint8Array.of(0xff, 0xfe, 0x7b) }, weights])).toMatch(/not UTF-8 text/);
    model.dispose();
    denseModel.dispose();
  });

  it('own text files: split 90/10, refused when binary or too short', () => {
    const d = splitText('own.txt', 'x'.repeat(5000));
    expect(d.train.length).toBe(4500);
    expect(d.val.length).toBe(500);
    expect(() => splitText('tiny.txt', 'short')).toThrow(/too short to train on \(5 characters/);
    expect(() => splitText('a.bin', `${'x'.repeat(3000)}\u0000`)).toThrow(/NUL bytes/);
    const tokens = new TextTokens(d);
    const batch = tokens.batch(new Rng(1), 3, 8, 'train');
    expect(batch.length).toBe(3 * 9);
    expect(Array.from(batch).every((t) => t === 120)).toBe(true);
  });

  it('the registry has the CLI presets plus the micro presets, and every kind', () => {
    const cli = createDefaultRegistry();
    expect(registry.presetNames()).toEqual([...cli.presetNames(), 'dense-micro', 'moe-micro'].sort());
    for (const kind of cli.kinds()) expect(registry.names(kind)).toEqual(cli.names(kind));
  });
});
