import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const tinySpec = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 16,
  contextLength: 16,
  stack: { groupSize: 1, repeats: 2 },
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 16 } },
  },
};

export function tmp(prefix = 'moelab-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A small English-like text file (a few kB) for fast CLI runs. */
export function textFile(dir: string): string {
  const words = 'the quick brown fox jumps over the lazy dog while experts route tokens to the layer that knows them best'.split(' ');
  let s = '';
  let i = 0;
  while (s.length < 6000) {
    s += `${words[(i * 7) % words.length]} ${words[(i * 3 + 1) % words.length]} ${words[i % words.length]}. `;
    if (i % 9 === 8) s += '\n';
    i++;
  }
  const p = join(dir, 'tiny.txt');
  writeFileSync(p, s);
  return p;
}
