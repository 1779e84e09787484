import { describe, expect, it } from 'vitest';
import { Rng } from '@moelab/core';
import { CorpusTokens, cleanBrown, loadBrown, loadSotu, loadCorpus, loadTextPath } from './corpus.js';

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
});
