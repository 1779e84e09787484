/**
 * The playground's upcycle path (src/upcycle.ts, what the Upcycle section runs): dense checkpoint files
 * in, an upcycler, the provenance table, and checkpoint files out that a run loads through the upload
 * path. Sparse upcycling with a renormalised top-2 router must reproduce the dense model's logits.
 */
import { buildModel, forwardContext, type LanguageModel, type Module, Rng, resolveBackend, Trainer, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkpointFiles, loadCheckpointFiles } from '../src/checkpoint.js';
import { splitText, TextTokens } from '../src/data.js';
import { createPlaygroundRegistry } from '../src/registry.js';
import { methodNode, sourceFromFiles, upcycledCheckpoint, upcycleSources } from '../src/upcycle.js';

type Model = Module & LanguageModel;
const registry = createPlaygroundRegistry();
const data = new TextTokens(splitText('fox.txt', 'The quick brown fox jumps over the lazy dog. '.repeat(80)));

/** dense-micro trained `steps` steps, as checkpoint files (what a run exports). */
function denseFiles(seed: number, steps: number) {
  const preset = registry.preset('dense-micro');
  const model = buildModel<Model>(preset.spec, registry, seed);
  const trainer = new Trainer(model, data, { ...preset.train, batchSize: 2, seqLen: 16, steps, seed });
  for (let i = 0; i < steps; i++) trainer.trainStep();
  const { configJson, weights } = checkpointFiles(model, { spec: preset.spec, step: steps, seed });
  return {
    model,
    files: [
      { name: 'config.json', bytes: new TextEncoder().encode(configJson) },
      { name: 'model.safetensors', bytes: weights },
    ],
  };
}

function logits(model: Model): Float32Array {
  return tf.tidy(
    () => model.forward(tf.tensor2d([[72, 101, 108, 108, 111, 32, 119]], [1, 7], 'int32'), forwardContext(new Rng(0), false)).dataSync() as Float32Array,
  );
}

beforeAll(async () => {
  await resolveBackend('cpu');
});

describe('upcycling in the playground', () => {
  it('sparse-upcycles a dense run: complete provenance, and the loaded result computes the dense logits', () => {
    const dense = denseFiles(1, 2);
    const source = sourceFromFiles('runA@2', dense.files);
    expect(source.step).toBe(2);
    const built = upcycleSources(registry, methodNode('sparse-upcycle', '{ "experts": 4, "layers": "all" }'), [source], data.tokens('train'));
    // Every tensor of the new model has a provenance row (rows fold layers into `*`).
    expect(built.rows.reduce((n, r) => n + r.count, 0)).toBe(built.result.weights.size);
    const ops = new Set(built.rows.map((r) => r.op));
    expect(ops.has('new')).toBe(true); // the routers
    expect(built.rows.some((r) => r.op !== 'new' && r.from.some((f) => f.startsWith('runA@2:')))).toBe(true);
    expect(built.result.report.totalParams).toBeGreaterThan(built.result.report.activeParams);
    const { configJson, weights } = upcycledCheckpoint(registry, built.result, { steps: 5, batchSize: 2, seqLen: 16 });
    const loaded = loadCheckpointFiles<Model>(
      [
        { name: 'config.json', bytes: new TextEncoder().encode(configJson) },
        { name: 'model.safetensors', bytes: weights },
      ],
      registry,
    );
    expect(loaded.config.step).toBe(0);
    const a = logits(dense.model);
    const b = logits(loaded.model);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    expect(diff).toBeLessThan(1e-4);
    dense.model.dispose();
    loaded.model.dispose();
  });

  it('merges a seed and its branches with BTX; names the expert sources', () => {
    const seed = sourceFromFiles('seed', denseFiles(1, 2).files);
    const experts = [1, 2].map((i) => sourceFromFiles(`expert${i}`, denseFiles(1, 2 + i).files));
    const built = upcycleSources(registry, methodNode('btx', ''), [seed, ...experts], data.tokens('train'));
    const from = built.rows.flatMap((r) => r.from).join(' ');
    expect(from).toContain('expert1:');
    expect(from).toContain('expert2:');
    expect(built.rows.some((r) => r.op === 'average')).toBe(true);
  });

  it('bad input: no sources, options that are not a JSON object, an unknown upcycler', () => {
    expect(() => upcycleSources(registry, methodNode('btx', '{}'), [], data.tokens('train'))).toThrow(/add a dense source first/);
    expect(() => methodNode('btx', '{ experts: 4 }')).toThrow(/^upcycler options: options are not JSON/);
    expect(() => methodNode('btx', '[1]')).toThrow('upcycler options: options must be a JSON object');
    const source = sourceFromFiles('s', denseFiles(1, 1).files);
    expect(() => upcycleSources(registry, methodNode('btxx', '{}'), [source], data.tokens('train'))).toThrow(/unknown upcycler "btxx"\. Did you mean: btx/);
  });
});
