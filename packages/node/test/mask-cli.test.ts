import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tmp, runCli, trainTiny } from './helpers.js';

const run = runCli;

/** A folder corpus with two domains (file names) of different text. */
function twoDomains(root: string): string {
  const dir = join(root, 'corpus');
  mkdirSync(dir);
  const make = (words: string[]) => Array.from({ length: 600 }, (_, i) => words[(i * 7 + (i >> 2)) % words.length]).join(' ');
  writeFileSync(join(dir, 'animals.txt'), make('the cat and the dog ran over the hill to see a fox'.split(' ')));
  writeFileSync(join(dir, 'numbers.txt'), make('1790 2021 42 7 365 1000 12 0.5 99 3.14 2048 64'.split(' ')));
  return dir;
}

describe('moelab mask / eval --mask', () => {
  let root: string;
  let data: string;
  let ckpt: string;
  beforeAll(() => {
    root = tmp();
    data = twoDomains(root);
    const r = trainTiny(root, data, 3, ['--eval-every', '0', '--quiet']);
    expect(r.code, r.err).toBe(0);
    ckpt = r.checkpoint;
  });

  it('mask prints per-domain perplexity before/after, writes the mask, and eval --mask uses it', () => {
    const out = join(root, 'm.json');
    const r = run(['mask', ckpt, '--domain', 'numbers', '--fraction', '0.25', '--domain-tokens', '96', '--out', out, '--backend', 'cpu']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(
      /masked 1 of 4 experts in 1 layers for "numbers" \(share-diff, fraction 0.25; statistics on the train split, at most 96 tokens per domain\)/,
    );
    expect(r.out).toMatch(/domain\s+tokens\s+ppl before\s+ppl masked\s+change/);
    expect(r.out).toMatch(/\n\* numbers\s+96\s+\d+\.\d{3}\s+\d+\.\d{3}\s+[+-]\d+\.\d\d%/);
    expect(r.out).toMatch(/\nanimals\s+96\s/);
    const file = JSON.parse(readFileSync(out, 'utf8'));
    expect(file).toMatchObject({ format: 'moelab-expert-mask-v1', domain: 'numbers', score: 'share-diff', fraction: 0.25, data });
    const layers = Object.entries(file.layers) as [string, number[]][];
    expect(layers).toHaveLength(1);
    expect(layers[0]![1]).toHaveLength(1);
    expect(r.out).toContain(`  ${layers[0]![0]}: ${layers[0]![1][0]}\n`);

    const plain = run(['eval', ckpt, '--data', data, '--eval-batches', '2', '--json', '--backend', 'cpu']);
    const masked = run(['eval', ckpt, '--data', data, '--eval-batches', '2', '--json', '--backend', 'cpu', '--mask', out]);
    expect(masked.code, masked.err).toBe(0);
    const a = JSON.parse(plain.out);
    const b = JSON.parse(masked.out);
    expect(b.masked).toEqual({ file: out, domain: 'numbers', experts: 1, layers: 1 });
    expect(b.loss).not.toBe(a.loss);
    expect(Number.isFinite(b.perplexity)).toBe(true);
    const text = run(['eval', ckpt, '--data', data, '--eval-batches', '1', '--backend', 'cpu', '--mask', out]);
    expect(text.out).toMatch(/perplexity \d+\.\d+, .* \(1 experts masked in 1 layers, domain "numbers"\)/);
  });

  it('one-line errors: missing --domain, unknown domain, bad score, bad mask file', () => {
    const e1 = run(['mask', ckpt, '--backend', 'cpu']);
    expect(e1.code).toBe(2);
    expect(e1.err).toMatch(/^moelab: usage: moelab mask <checkpoint-dir> --domain LABEL/);
    const e2 = run(['mask', ckpt, '--domain', 'plants', '--data', data, '--backend', 'cpu']);
    expect(e2.err).toMatch(/--domain: no document of corpus has the domain "plants"; domains: animals, numbers\n$/);
    const e3 = run(['mask', ckpt, '--domain', 'numbers', '--score', 'magic', '--backend', 'cpu']);
    expect(e3.err).toBe('moelab: --score must be one of share-diff, share-ratio, skew, got "magic"\n');
    writeFileSync(join(root, 'bad.json'), JSON.stringify({ format: 'moelab-expert-mask-v1', domain: 'x', layers: { 'no.such.layer': [0] } }));
    const e4 = run(['eval', ckpt, '--data', data, '--backend', 'cpu', '--mask', join(root, 'bad.json')]);
    expect(e4.code).toBe(2);
    expect(e4.err).toMatch(/\nmoelab: mask: the model has no layer "no.such.layer"; maskable layers: transformer\.\S+\n$/);
  });
});
