import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, trainedTiny, twoDomains } from './helpers.js';

const run = runCli;

describe('moelab mask / eval --mask', () => {
  const fixture = trainedTiny(twoDomains, 3);

  it('mask prints per-domain perplexity before/after, writes the mask, and eval --mask uses it', () => {
    const out = join(fixture.root, 'm.json');
    const r = run(['mask', fixture.ckpt, '--domain', 'numbers', '--fraction', '0.25', '--domain-tokens', '96', '--out', out, '--backend', 'cpu']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(
      /masked 1 of 4 experts in 1 layers for "numbers" \(share-diff, fraction 0.25; statistics on the train split, at most 96 tokens per domain\)/,
    );
    expect(r.out).toMatch(/domain\s+tokens\s+ppl before\s+ppl masked\s+change/);
    expect(r.out).toMatch(/\n\* numbers\s+96\s+\d+\.\d{3}\s+\d+\.\d{3}\s+[+-]\d+\.\d\d%/);
    expect(r.out).toMatch(/\nanimals\s+96\s/);
    const file = JSON.parse(readFileSync(out, 'utf8'));
    expect(file).toMatchObject({ format: 'moelab-expert-mask-v1', domain: 'numbers', score: 'share-diff', fraction: 0.25, data: fixture.data });
    const layers = Object.entries(file.layers) as [string, number[]][];
    expect(layers).toHaveLength(1);
    expect(layers[0]![1]).toHaveLength(1);
    expect(r.out).toContain(`  ${layers[0]![0]}: ${layers[0]![1][0]}\n`);

    const plain = run(['eval', fixture.ckpt, '--data', fixture.data, '--eval-batches', '2', '--json', '--backend', 'cpu']);
    const masked = run(['eval', fixture.ckpt, '--data', fixture.data, '--eval-batches', '2', '--json', '--backend', 'cpu', '--mask', out]);
    expect(masked.code, masked.err).toBe(0);
    const a = JSON.parse(plain.out);
    const b = JSON.parse(masked.out);
    expect(b.masked).toEqual({ file: out, domain: 'numbers', experts: 1, layers: 1 });
    expect(b.loss).not.toBe(a.loss);
    expect(Number.isFinite(b.perplexity)).toBe(true);
    const text = run(['eval', fixture.ckpt, '--data', fixture.data, '--eval-batches', '1', '--backend', 'cpu', '--mask', out]);
    expect(text.out).toMatch(/perplexity \d+\.\d+, .* \(1 experts masked in 1 layers, domain "numbers"\)/);
  });

  it('one-line errors: missing --domain, unknown domain, bad score, bad mask file', () => {
    const e1 = run(['mask', fixture.ckpt, '--backend', 'cpu']);
    expect(e1.code).toBe(2);
    expect(e1.err).toMatch(/^moelab: usage: moelab mask <checkpoint-dir> --domain LABEL/);
    const e2 = run(['mask', fixture.ckpt, '--domain', 'plants', '--data', fixture.data, '--backend', 'cpu']);
    expect(e2.err).toMatch(/--domain: no document of corpus has the domain "plants"; domains: animals, numbers\n$/);
    const e3 = run(['mask', fixture.ckpt, '--domain', 'numbers', '--score', 'magic', '--backend', 'cpu']);
    expect(e3.err).toBe('moelab: --score must be one of share-diff, share-ratio, skew, got "magic"\n');
    writeFileSync(join(fixture.root, 'bad.json'), JSON.stringify({ format: 'moelab-expert-mask-v1', domain: 'x', layers: { 'no.such.layer': [0] } }));
    const e4 = run(['eval', fixture.ckpt, '--data', fixture.data, '--backend', 'cpu', '--mask', join(fixture.root, 'bad.json')]);
    expect(e4.code).toBe(2);
    expect(e4.err).toMatch(/\nmoelab: mask: the model has no layer "no.such.layer"; maskable layers: transformer\.\S+\n$/);
  });
});
