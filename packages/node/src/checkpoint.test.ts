import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildModel, forwardContext, Rng, tf } from '@moelab/core';
import { loadCheckpoint, type Model, saveCheckpoint } from './checkpoint.js';
import { writeDirAtomic } from './fsutil.js';
import { createDefaultRegistry } from './registry.js';
import { tinySpec, tmp } from '../test/helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function logits(m: Model): Float32Array {
  return tf.tidy(() => m.forward(tf.tensor2d([[1, 2, 3, 4, 5]], [1, 5], 'int32'), forwardContext(new Rng(0), false)).dataSync() as Float32Array);
}

describe('checkpoints', () => {
  it('round-trip: config.json + model.safetensors reproduce the model exactly', () => {
    const reg = createDefaultRegistry();
    const m = buildModel<Model>(tinySpec, reg, 5);
    const dir = join(tmp(), 'ckpt');
    saveCheckpoint(dir, m, { spec: tinySpec, step: 3, seed: 5 });
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'model.safetensors']);
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({ format: 'moelab-checkpoint-v1', step: 3, spec: tinySpec, tokenizer: 'byte' });
    const { model } = loadCheckpoint(dir, reg);
    expect(Array.from(logits(model))).toEqual(Array.from(logits(m)));
  });

  it('a failed write leaves the previous checkpoint intact', () => {
    const dir = join(tmp(), 'c');
    writeDirAtomic(dir, (t) => writeFileSync(join(t, 'a.txt'), 'old'));
    expect(() =>
      writeDirAtomic(dir, (t) => {
        writeFileSync(join(t, 'a.txt'), 'new-but-half');
        throw new Error('disk full');
      }),
    ).toThrow(/disk full/);
    expect(readFileSync(join(dir, 'a.txt'), 'utf8')).toBe('old');
    expect(readdirSync(join(dir, '..')).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('clear errors: not a checkpoint, bad JSON, truncated weights, mismatched tensors', () => {
    const reg = createDefaultRegistry();
    const root = tmp();
    expect(() => loadCheckpoint(root, reg)).toThrow(/not a moelab checkpoint: config.json is missing/);
    const m = buildModel<Model>(tinySpec, reg, 5);
    const dir = join(root, 'ck');
    saveCheckpoint(dir, m, { spec: tinySpec, step: 1, seed: 5 });
    const w = readFileSync(join(dir, 'model.safetensors'));
    writeFileSync(join(dir, 'model.safetensors'), w.subarray(0, w.length - 100));
    expect(() => loadCheckpoint(dir, reg)).toThrow(/model\.safetensors: tensor ".*": data_offsets .* run past the data section/);
    writeFileSync(join(dir, 'config.json'), '{"format": ');
    expect(() => loadCheckpoint(dir, reg)).toThrow(/config\.json: config\.json is not valid JSON/);
    const other = join(root, 'other');
    mkdirSync(other);
    saveCheckpoint(other, m, { spec: tinySpec, step: 1, seed: 5 });
    const cfg = JSON.parse(readFileSync(join(other, 'config.json'), 'utf8'));
    cfg.spec.dModel = 32;
    writeFileSync(join(other, 'config.json'), JSON.stringify(cfg));
    expect(() => loadCheckpoint(other, reg)).toThrow(/wrong shape: embedding\.weight \(model \[256,32\], file \[256,16\]\)/);
    expect(existsSync(join(other, 'model.safetensors'))).toBe(true);
  });
});
