import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { textFile, tinySpec, tmp, runCli, trainTiny } from './helpers.js';

const run = runCli;

describe('moelab CLI', () => {
  let root: string;
  let data: string;
  let ckpt: string;
  beforeAll(() => {
    root = tmp();
    data = textFile(root);
    const r = trainTiny(root, data, 4, ['--eval-every', '2']);
    expect(r.err).toContain('backend: cpu');
    expect(r.code, r.err).toBe(0);
    ckpt = r.checkpoint;
  });

  it('train writes a checkpoint, metrics and a summary line with progress output', () => {
    expect(existsSync(join(ckpt, 'model.safetensors'))).toBe(true);
    const lines = readFileSync(join(root, 'run', 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n');
    expect(lines.filter((l) => l.includes('"type":"train"')).length).toBe(4);
    expect(lines.filter((l) => l.includes('"type":"eval"')).length).toBe(2);
  });

  it('eval prints validation loss and perplexity', () => {
    const r = run(['eval', ckpt, '--data', data, '--eval-batches', '2', '--json', '--backend', 'cpu']);
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.step).toBe(4);
    expect(j.perplexity).toBeCloseTo(Math.exp(j.loss), 6);
  });

  it('generate continues a prompt', () => {
    const r = run(['generate', ckpt, '--prompt', 'the ', '--tokens', '20', '--top-k', '5', '--backend', 'cpu']);
    expect(r.code, r.err).toBe(0);
    expect(r.out.startsWith('the ')).toBe(true);
    expect(Buffer.byteLength(r.out.trimEnd(), 'utf8')).toBeGreaterThan(4);
    expect(r.err).not.toMatch(/no KV cache/);
    // Within the context (16 here) the KV-cached default and the full re-run per token (--no-cache)
    // sample the same text; past it the cached path slides its window by half the context.
    const args = ['generate', ckpt, '--prompt', 'the ', '--tokens', '12', '--top-k', '5', '--backend', 'cpu'];
    const cached = run(args);
    const full = run([...args, '--no-cache']);
    expect(full.code, full.err).toBe(0);
    expect(full.out).toBe(cached.out);
  });

  it('inspect shows parameter counts and per-layer routing', () => {
    const r = run(['inspect', ckpt, '--text', 'the quick brown fox', '--json', '--backend', 'cpu']);
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.parameters).toBeGreaterThan(j.activeParameters);
    expect(j.layers).toHaveLength(1);
    expect(j.layers[0].load.reduce((a: number, b: number) => a + b, 0)).toBeCloseTo(1, 5);
    for (const key of [
      'cv',
      'maxVio',
      'dropRate',
      'tokenDropRate',
      'routingEntropy',
      'marginalEntropy',
      'expertsPerTokenMin',
      'expertsPerTokenMax',
      'zLoss',
      'saturation',
    ])
      expect(j.layers[0][key], key).toEqual(expect.any(Number));
    const t = run(['inspect', ckpt, '--text', 'the quick brown fox', '--backend', 'cpu']);
    expect(t.out).toMatch(/experts chosen per token/);
    expect(t.out).toMatch(/marg\. entropy .* token drop .* experts\/token \[min-max\] .* z-loss .* saturation/);
  });

  it('list --json describes every entry with its JSON Schema', () => {
    const r = run(['list', 'router', '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.map((e: { name: string }) => e.name)).toContain('softmax-topk');
    expect(j[0].jsonSchema.type).toBe('object');
  });

  it('bad input gives a one-line error, never a stack trace', () => {
    const bad = { ...tinySpec, block: { ...tinySpec.block, ffn: { ...tinySpec.block.ffn, router: { type: 'softmax-topk', k: 9 } } } };
    writeFileSync(join(root, 'bad.json'), JSON.stringify(bad));
    const cases: [string[], RegExp][] = [
      [['train', join(root, 'bad.json'), '--data', data, '--backend', 'cpu'], /\$\.block\.ffn\.router\.k: k = 9 exceeds the number of experts \(4\)/],
      [['train', '--preset', 'moe-tinny'], /unknown preset "moe-tinny"\. Did you mean: moe-tiny/],
      [['eval', join(root, 'nope')], /not a moelab checkpoint/],
      [['train', join(root, 'tiny.json'), '--steps', 'many'], /--steps expects an integer, got "many"/],
      [['frobnicate'], /unknown command "frobnicate"/],
      [['train', '--bogus'], /unknown option "--bogus" for `moelab train`/],
      [['train', join(root, 'tiny.json'), '--backend', 'quantum'], /unknown backend "quantum"/],
    ];
    for (const [args, re] of cases) {
      const r = run(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err).toMatch(re);
      expect(r.err).not.toMatch(/\n\s+at /);
    }
  });
});
