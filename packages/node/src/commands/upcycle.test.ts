import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildModel, forwardContext, Rng, tf } from '@moelab/core';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { loadCheckpoint, type Model, saveCheckpoint } from '../checkpoint.js';
import { runCli } from '../program.js';
import { createDefaultRegistry } from '../registry.js';

const dir = mkdtempSync(join(tmpdir(), 'moelab-upcycle-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const spec = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 16,
  contextLength: 16,
  positionEmbedding: 'learned',
  outNorm: 'rmsnorm',
  stack: { groupSize: 2 },
  block: {
    type: 'transformer',
    layout: 'parallel',
    normType: 'rmsnorm',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'dense', hidden: 32, glu: true, activation: 'silu' },
  },
};

/** A dense checkpoint: the seed's weights moved by a little noise (a stand-in for domain training). */
function dense(name: string, noise: number): string {
  const m = buildModel<Model>(spec, createDefaultRegistry(), 3);
  for (const [i, [, v]] of m.namedParameters().entries()) if (noise > 0) v.assign(tf.add(v, tf.randomNormal(v.shape, 0, noise, 'float32', i + name.length)));
  const out = join(dir, name, 'checkpoint');
  saveCheckpoint(out, m, { spec, step: 10, seed: 0, train: { data: 'brown' } });
  m.dispose();
  return out;
}

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const write = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s);
    return true;
  });
  try {
    const code = await runCli(argv, { out: (s) => (out += s), err: (s) => (err += s) });
    return { code, out, err };
  } finally {
    write.mockRestore();
  }
}

const logits = (m: Model) => tf.tidy(() => m.forward(tf.tensor2d([[1, 2, 3, 4, 5]], [1, 5], 'int32'), forwardContext(new Rng(0), false)).dataSync());

describe('moelab upcycle', () => {
  const seed = dense('seed', 0);
  const experts = ['kjv', 'jargon', 'devil'].map((n) => dense(n, 0.01));

  it('btx: prints the report and the provenance table and writes a checkpoint every command loads', async () => {
    const out = join(dir, 'btx', 'checkpoint');
    const r = await cli('upcycle', '--method', 'btx', '--seed', seed, '--experts', experts.join(','), '--out', out);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^upcycler: btx \(\d+ ms\)\nparameters: [\d.]+k total, [\d.]+k active per token \(seed: [\d.]+k total/);
    expect(r.out).toMatch(/transformer\.layers\.\*\.ffn\.experts\.w1 \(×2\) +\[4,16,32\] +stack +seed:transformer\.layers\.\*\.ffn\.w1\.weight, kjv:/);
    expect(r.out).toMatch(/embedding\.weight +\[256,16\] +average +seed:embedding\.weight, kjv:embedding\.weight, jargon:embedding\.weight \(\+1 more\)/);
    expect(readdirSync(out).sort()).toEqual(['config.json', 'model.safetensors', 'provenance.json']);
    const { model, config } = loadCheckpoint(out, createDefaultRegistry());
    expect((config.spec as unknown as { block: { ffn: { expertNames: string[] } } }).block.ffn.expertNames).toEqual(['seed', 'kjv', 'jargon', 'devil']);
    expect(logits(model).every(Number.isFinite)).toBe(true);
    const prov = JSON.parse(readFileSync(join(out, 'provenance.json'), 'utf8')) as { tensors: { tensor: string; op: string }[] };
    expect(prov.tensors.find((t) => t.tensor === 'transformer.layers.0.ffn.router.weight')!.op).toBe('new');
    const inspect = await cli('inspect', out);
    expect(inspect.code).toBe(0);
  });

  it('sparse-upcycle --experts N makes N copies of the seed: the same function as the seed', async () => {
    const out = join(dir, 'su', 'checkpoint');
    const r = await cli(
      'upcycle',
      '--method',
      'sparse-upcycle',
      '--seed',
      seed,
      '--experts',
      '4',
      '--config',
      '{"layers": "all"}',
      '--provenance',
      'none',
      '--out',
      out,
    );
    expect(r.code).toBe(0);
    expect(r.out).not.toMatch(/tensor +shape/);
    const up = loadCheckpoint(out, createDefaultRegistry()).model;
    const base = loadCheckpoint(seed, createDefaultRegistry()).model;
    const a = logits(up);
    const b = logits(base);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    expect(diff).toBeLessThan(1e-4);
  });

  it('nexus with --domains computes seed-mean domain embeddings from text files', async () => {
    const texts = ['In the beginning was the word.', 'A hacker is one who enjoys the intellectual challenge.', 'Cynic, n. A blackguard.'].map((t, i) => {
      const f = join(dir, `domain-${i}.txt`);
      writeFileSync(f, `${t}\n`.repeat(200));
      return f;
    });
    const out = join(dir, 'nexus', 'checkpoint');
    const r = await cli(
      'upcycle',
      '--method',
      'nexus',
      '--seed',
      seed,
      '--experts',
      experts.join(','),
      '--domains',
      texts.join(','),
      '--samples',
      '4',
      '--json',
      '--out',
      out,
    );
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as { report: { method: string; notes: string[] } };
    expect(j.report.method).toBe('nexus');
    expect(j.report.notes.join(' ')).toMatch(/seed-mean of seed's final hidden state/);
    expect(loadCheckpoint(out, createDefaultRegistry()).model).toBeDefined();
  });

  it('moefication --partition co-activation with --calibration: every group active reproduces the seed; without calibration a one-line error', async () => {
    const text = join(dir, 'calibration.txt');
    writeFileSync(text, 'The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!\n'.repeat(20));
    const out = join(dir, 'moefication', 'checkpoint');
    const args = ['upcycle', '--method', 'moefication', '--partition', 'co-activation', '--seed', seed, '--config', '{"experts": 4, "k": 4}'];
    const r = await cli(...args, '--calibration', text, '--samples', '6', '--provenance', 'none', '--out', out);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/4 experts of co-activation neuron groups per FFN/);
    expect(r.out).toMatch(/router top-4 covers 100\.0% of held-out activation mass/);
    const a = logits(loadCheckpoint(out, createDefaultRegistry()).model);
    const b = logits(loadCheckpoint(seed, createDefaultRegistry()).model);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    expect(diff).toBeLessThan(1e-4);
    const none = await cli(...args, '--out', join(dir, 'moefication-bad', 'checkpoint'));
    expect(none.code).toBe(2);
    expect(none.err).toMatch(/^moelab: sources\.calibration: partition "co-activation" needs calibration token sequences \(--calibration TEXT\)/);
    const bad = await cli('upcycle', '--method', 'moefication', '--partition', 'metis', '--seed', seed, '--out', join(dir, 'moefication-bad', 'checkpoint'));
    expect(bad.err).toMatch(/^moelab: upcycler\.partition/);
  });

  it('bad input: one line naming the problem, no checkpoint written', async () => {
    const out = join(dir, 'bad', 'checkpoint');
    const unknown = await cli('upcycle', '--method', 'btz', '--seed', seed, '--experts', experts[0]!, '--out', out);
    expect(unknown.code).toBe(2);
    expect(unknown.err).toMatch(/^moelab: upcycler: unknown upcycler "btz"\. Did you mean: btx/);
    const missing = await cli('upcycle', '--method', 'btx', '--seed', join(dir, 'nope'), '--experts', experts[0]!, '--out', out);
    expect(missing.err).toMatch(/^moelab: --seed .*nope: checkpoint directory not found\n$/);
    const wideSpec = { ...spec, block: { ...spec.block, ffn: { ...spec.block.ffn, hidden: 48 } } };
    const wide = buildModel<Model>(wideSpec, createDefaultRegistry(), 0);
    const widePath = join(dir, 'wide', 'checkpoint');
    saveCheckpoint(widePath, wide, { spec: wideSpec, step: 1, seed: 0 });
    const mismatched = await cli('upcycle', '--method', 'btx', '--seed', seed, '--experts', `${experts[0]},${widePath}`, '--out', out);
    expect(mismatched.err).toMatch(
      /^moelab: experts\[1\] \(wide\): architecture differs from seed \(seed\): \$\.layers\[0\]\.ffn\.hidden is 48 here and 32 there/,
    );
    const count = await cli('upcycle', '--method', 'btx', '--seed', seed, '--experts', '3', '--out', out);
    expect(count.err).toMatch(/a number of experts is for sparse-upcycle/);
    const usage = await cli('upcycle', '--seed', seed);
    expect(usage.err).toMatch(/^moelab: usage: moelab upcycle --method NAME/);
    expect(() => readdirSync(join(dir, 'bad'))).toThrow();
  });
});
