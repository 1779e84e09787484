import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, expect } from 'vitest';

/** The built CLI (`pnpm test` builds it first). */
export const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

/** Run the built CLI; one-line errors only (MOELAB_DEBUG unset). */
export function runCli(args: string[], cwd?: string): { code: number | null; out: string; err: string } {
  if (!existsSync(cli)) throw new Error(`${cli} is missing: run \`pnpm build\` first (pnpm test does)`);
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', cwd, env: { ...process.env, MOELAB_DEBUG: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** `moelab train` of `tinySpec` on `data` for a few steps on the cpu backend, into `<root>/run`. */
export function trainTiny(root: string, data: string, steps: number, extra: string[] = []): ReturnType<typeof runCli> & { checkpoint: string } {
  writeFileSync(join(root, 'tiny.json'), JSON.stringify(tinySpec));
  const args = ['train', join(root, 'tiny.json'), '--data', data, '--steps', String(steps), '--batch', '2', '--seq', '16', '--eval-batches', '1'];
  const r = runCli([...args, '--out', join(root, 'run'), '--backend', 'cpu', ...extra]);
  return { ...r, checkpoint: join(root, 'run', 'checkpoint') };
}

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

/** A folder corpus with two domains (file names) of different text. */
export function twoDomains(root: string): string {
  const dir = join(root, 'corpus');
  mkdirSync(dir);
  const make = (words: string[]) => Array.from({ length: 600 }, (_, i) => words[(i * 7 + (i >> 2)) % words.length]).join(' ');
  writeFileSync(join(dir, 'animals.txt'), make('the cat and the dog ran over the hill to see a fox'.split(' ')));
  writeFileSync(join(dir, 'numbers.txt'), make('1790 2021 42 7 365 1000 12 0.5 99 3.14 2048 64'.split(' ')));
  return dir;
}

/**
 * A describe block's shared fixture: in `beforeAll`, a temporary folder, its corpus (`makeData`) and
 * `tinySpec` trained on it for `steps` steps. The fields are filled when the tests run.
 */
export function trainedTiny(makeData: (root: string) => string, steps: number): { root: string; data: string; ckpt: string } {
  const f = { root: '', data: '', ckpt: '' };
  beforeAll(() => {
    f.root = tmp();
    f.data = makeData(f.root);
    const r = trainTiny(f.root, f.data, steps, ['--eval-every', '0', '--quiet']);
    expect(r.code, r.err).toBe(0);
    f.ckpt = r.checkpoint;
  });
  return f;
}
