/**
 * Checkpoints written by earlier versions keep loading and computing the same logits
 * (fixtures/checkpoints: never regenerated; see its README).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeCheckpoint, forwardContext, readSafetensors, Rng, setWarningHandler, Trainer, tf } from '@moelab/core';
import { loadCheckpoint, loadOptimizerState, type Model } from '../src/checkpoint.js';
import { createDefaultRegistry } from '../src/registry.js';

const fixtures = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../../../fixtures/checkpoints');

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function expected(dir: string): { prompt: number[]; logits: Float32Array } {
  const file = readSafetensors(new Uint8Array(readFileSync(join(dir, 'expected-logits.safetensors'))));
  return { prompt: Array.from(new TextEncoder().encode(file.metadata.prompt!)), logits: file.tensors.get('logits')!.data as Float32Array };
}

function logits(m: Model, prompt: number[]): Float32Array {
  return tf.tidy(() => m.forward(tf.tensor2d([prompt], [1, prompt.length], 'int32'), forwardContext(new Rng(0), false)).dataSync() as Float32Array);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('checkpoints of earlier versions', () => {
  const dir = join(fixtures, 'v1-moe-2layer');

  it('moelab-checkpoint-v1 loads from its directory, without warnings, and gives the logits it gave when saved', () => {
    const warnings: string[] = [];
    const previous = setWarningHandler((m) => warnings.push(m));
    try {
      const { model, config } = loadCheckpoint(dir, createDefaultRegistry());
      expect(config).toMatchObject({ format: 'moelab-checkpoint-v1', step: 3, seed: 7, train: { steps: 3, data: 'inline pangram' } });
      const ref = expected(dir);
      expect(ref.logits.length).toBe(9 * 256);
      expect(maxAbsDiff(logits(model, ref.prompt), ref.logits)).toBeLessThan(1e-4);
      model.dispose();
    } finally {
      setWarningHandler(previous);
    }
    expect(warnings).toEqual([]);
  });

  it('the in-memory decoder (the playground path) reads the same files', () => {
    const { model } = decodeCheckpoint<Model>(
      readFileSync(join(dir, 'config.json'), 'utf8'),
      new Uint8Array(readFileSync(join(dir, 'model.safetensors'))),
      createDefaultRegistry(),
    );
    const ref = expected(dir);
    expect(maxAbsDiff(logits(model, ref.prompt), ref.logits)).toBeLessThan(1e-4);
    model.dispose();
  });

  it('its optimizer state restores into a trainer (resume)', () => {
    const { model, config } = loadCheckpoint(dir, createDefaultRegistry());
    const data = { batch: (_rng: Rng, B: number, T: number) => new Int32Array(B * (T + 1)).fill(65) };
    const trainer = new Trainer(model, data, { ...config.train, seed: config.seed });
    loadOptimizerState(dir, trainer);
    expect(trainer.step).toBe(3);
    model.dispose();
  });
});
