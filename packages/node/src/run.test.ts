import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '@moelab/core';
import { createDefaultRegistry } from './registry.js';
import { trainRun } from './run.js';
import { textFile, tinySpec, tmp } from '../test/helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function trainLosses(dir: string): number[] {
  return readFileSync(join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
    .filter((r) => r.type === 'train')
    .map((r) => r.loss);
}

describe('training runs on disk', () => {
  it('--resume continues exactly: same losses as an uninterrupted run', () => {
    const root = tmp();
    const data = textFile(root);
    const registry = createDefaultRegistry();
    const train = { steps: 6, batchSize: 4, seqLen: 16, lr: 5e-3, warmup: 2, evalEvery: 0, evalBatches: 1, seed: 11 };
    const a = trainRun({ registry, spec: tinySpec, train, data, outDir: join(root, 'a'), quiet: true });
    trainRun({ registry, spec: tinySpec, train, data, outDir: join(root, 'b'), quiet: true, stopAfter: 3 });
    const b = trainRun({ registry, spec: {} as never, train: {}, data, outDir: join(root, 'b'), quiet: true, resume: true });
    expect(b.steps).toBe(6);
    expect(b.freshOptimizer).toBe(false);
    expect(trainLosses(join(root, 'b'))).toEqual(trainLosses(join(root, 'a')));
    expect(b.finalEval.loss).toBe(a.finalEval.loss);
    // Resuming another run's checkpoint into a new run directory continues exactly too (steps 4..6 of a).
    trainRun({ registry, spec: tinySpec, train, data, outDir: join(root, 'c'), quiet: true, stopAfter: 3 });
    const d = trainRun({
      registry,
      spec: {} as never,
      train: {},
      data,
      outDir: join(root, 'd'),
      quiet: true,
      resume: true,
      resumeFrom: join(root, 'c', 'checkpoint'),
    });
    expect(d.steps).toBe(6);
    expect(trainLosses(join(root, 'd'))).toEqual(trainLosses(join(root, 'a')).slice(3));
    expect(d.finalEval.loss).toBe(a.finalEval.loss);
    const lines = readFileSync(join(root, 'a', 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines[0]).toMatchObject({ type: 'start', parameters: expect.any(Number) });
    const first = lines.find((l) => l.type === 'train');
    expect(first.routing).toHaveLength(1);
    expect(first.routing[0].load).toHaveLength(4);
    // every per-layer metric of docs/metrics.md reaches metrics.jsonl
    const layer = first.routing[0];
    for (const key of ['loadFraction', 'keptLoadFraction', 'tokensPerExpert']) expect(layer[key]).toHaveLength(4);
    for (const key of [
      'cv',
      'maxVio',
      'maxOverMean',
      'deadExperts',
      'dropRate',
      'tokenDropRate',
      'expertsPerToken',
      'expertsPerTokenMin',
      'expertsPerTokenMax',
      'routingEntropy',
      'marginalEntropy',
      'loadEntropy',
      'zLoss',
      'saturation',
    ])
      expect(layer[key], key).toEqual(expect.any(Number));
    expect(layer.loadFraction.reduce((a: number, b: number) => a + b, 0)).toBeCloseTo(1, 3);
    expect(layer.expertsPerTokenMin).toBe(2);
    expect(layer.routingEntropy).toBeLessThanOrEqual(1);
    expect(layer.marginalEntropy).toBeLessThanOrEqual(1);
    expect(lines.at(-1).type).toBe('eval');
  });

  it('statsEvery: metrics.jsonl reports routing at step 1, every N-th and the last step, equal to a per-step run there', () => {
    const root = tmp();
    const data = textFile(root);
    const registry = createDefaultRegistry();
    const train = { steps: 5, batchSize: 2, seqLen: 8, lr: 5e-3, warmup: 1, evalEvery: 0, evalBatches: 1, seed: 3 };
    trainRun({ registry, spec: tinySpec, train: { ...train, statsEvery: 1 }, data, outDir: join(root, 'every'), quiet: true });
    trainRun({ registry, spec: tinySpec, train: { ...train, statsEvery: 2 }, data, outDir: join(root, 'sparse'), quiet: true });
    const trainLines = (dir: string) =>
      readFileSync(join(root, dir, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .filter((r) => r.type === 'train');
    const every = trainLines('every');
    const sparse = trainLines('sparse');
    expect(sparse.map((l) => l.step)).toEqual([1, 2, 3, 4, 5]);
    expect(sparse.filter((l) => l.routing).map((l) => l.step)).toEqual([1, 2, 4, 5]);
    sparse.forEach((l, i) => {
      expect(l.loss).toBe(every[i].loss);
      if (l.routing) expect(l.routing).toEqual(every[i].routing);
    });
  });

  it('refuses to resume a finished run without more steps', () => {
    const root = tmp();
    const data = textFile(root);
    const registry = createDefaultRegistry();
    trainRun({
      registry,
      spec: tinySpec,
      train: { steps: 2, batchSize: 2, seqLen: 8, evalEvery: 0, evalBatches: 1 },
      data,
      outDir: join(root, 'r'),
      quiet: true,
    });
    expect(() => trainRun({ registry, spec: tinySpec, train: {}, data, outDir: join(root, 'r'), quiet: true, resume: true })).toThrow(
      /already at step 2 of 2; pass a larger --steps/,
    );
  });
});
