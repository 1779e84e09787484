import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { Rng } from '@moelab/core';
import { CorpusTokens, cleanBrown, domainName, loadBrown, loadDomains, loadSotu, loadCorpus, loadTextPath, readText } from './corpus.js';

describe('corpora', () => {
  it('strips Brown word/tag format', () => {
    const raw = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n\tIt's/pps+bez fine/jj ,/, he/pps said/vbd ./.\n";
    expect(cleanBrown(raw)).toBe('The jury said " no evidence ".\nIt\'s fine, he said.');
  });

  it('Brown: 500 files, 15 genres, every 10th file is validation', () => {
    const c = loadBrown();
    expect(c.docs.length).toBe(500);
    expect(new Set(c.docs.map((d) => d.domain)).size).toBe(15);
    expect(c.docs.filter((d) => d.split === 'val').length).toBe(50);
    expect(c.docs.some((d) => d.text.includes('/nn'))).toBe(false);
    const chars = c.docs.reduce((s, d) => s + d.text.length, 0);
    expect(chars).toBeGreaterThan(5.5e6);
    expect(chars).toBeLessThan(6.5e6);
  });

  it('SOTU: speeches sorted by year with era/party domains, every 5th is validation', () => {
    const c = loadSotu();
    expect(c.docs.length).toBeGreaterThan(200);
    expect(c.docs[0]!.id.startsWith('1790')).toBe(true);
    expect(c.docs[0]!.domain.startsWith('1790-1860/')).toBe(true);
    expect(c.docs.filter((d) => d.split === 'val').length).toBe(Math.floor(c.docs.length / 5));
  });

  it('windows are deterministic for a given RNG and come from the right split', () => {
    const src = new CorpusTokens({
      name: 't',
      docs: [
        { id: 'a', domain: 'x', split: 'train', text: 'abcdefghijklmnopqrstuvwxyz'.repeat(10) },
        { id: 'b', domain: 'x', split: 'val', text: '0123456789'.repeat(10) },
      ],
    });
    const a = src.batch(new Rng(1), 3, 8, 'train');
    expect(a).toEqual(src.batch(new Rng(1), 3, 8, 'train'));
    expect(a.length).toBe(27);
    const v = src.batch(new Rng(1), 2, 8, 'val');
    expect(Array.from(v).every((t) => (t >= 48 && t <= 57) || t === 10)).toBe(true);
  });

  it('own text: clear errors for a missing path or too little text', () => {
    expect(() => loadTextPath('/nonexistent/x.txt')).toThrow(/\/nonexistent\/x\.txt: no such file or folder/);
    expect(() => loadCorpus('brwon')).toThrow('brwon: no such file or folder (built-in corpora: brown, sotu). Did you mean: brown?');
  });

  it('domains: one per file (.txt, gzip/dictzip .dict.dz) or per sub-folder, with a held-out tail per domain', () => {
    const dir = mkdtempSync(join(tmpdir(), 'moelab-domains-'));
    try {
      const a = 'alpha '.repeat(200);
      const b = 'beta '.repeat(200);
      writeFileSync(join(dir, 'plain.txt'), a);
      writeFileSync(join(dir, 'lexicon.dict.dz'), gzipSync(Buffer.from(b)));
      mkdirSync(join(dir, 'letters'));
      writeFileSync(join(dir, 'letters', 'one.txt'), 'x'.repeat(500));
      writeFileSync(join(dir, 'letters', 'two.md'), 'y'.repeat(500));
      writeFileSync(join(dir, 'letters', 'skip.json'), '{}');
      expect(domainName('jargon.dict.dz')).toBe('jargon');
      expect(domainName('notes.txt.gz')).toBe('notes');
      expect(readText(join(dir, 'lexicon.dict.dz'))).toBe(b);
      const c = loadTextPath(dir, { heldOut: 0.05 });
      expect([...new Set(c.docs.map((d) => d.domain))]).toEqual(['letters', 'lexicon', 'plain']);
      const val = c.docs.find((d) => d.domain === 'plain' && d.split === 'val')!;
      expect(val.text).toBe(a.slice(Math.floor(a.length * 0.95)));
      expect(c.docs.filter((d) => d.domain === 'letters').map((d) => d.id)).toEqual([
        'letters/one.txt#train',
        'letters/one.txt#val',
        'letters/two.md#train',
        'letters/two.md#val',
      ]);
      const named = loadDomains({ lex: 'lexicon.dict.dz', mine: 'letters' }, { baseDir: dir, heldOut: 0.1, where: '$.corpus.domains' });
      expect([...new Set(named.docs.map((d) => d.domain))]).toEqual(['lex', 'mine']);
      expect(named.docs.filter((d) => d.domain === 'lex' && d.split === 'train')[0]!.text).toBe(b.slice(0, 900));
      expect(() => loadDomains({ lex: 'lexicon.dz' }, { baseDir: dir, where: '$.corpus.domains' })).toThrow(
        `$.corpus.domains.lex: the file of domain "lex" does not exist: ${join(dir, 'lexicon.dz')}`,
      );
      writeFileSync(join(dir, 'broken.gz'), 'not gzip');
      expect(() => readText(join(dir, 'broken.gz'), '$.corpus.domains.x')).toThrow(/^\$\.corpus\.domains\.x: .*broken\.gz: not a gzip\/dictzip file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
