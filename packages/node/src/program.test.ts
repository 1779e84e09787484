import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MoelabError } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { tinySpec, tmp } from '../test/helpers.js';
import { runCli, userMessage } from './program.js';

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = { code: 0, out: '', err: '' };
  r.code = await runCli(argv, {
    out: (s) => {
      r.out += s;
    },
    err: (s) => {
      r.err += s;
    },
  });
  return r;
}

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

describe('the one line a user sees for an error', () => {
  it('a MoelabError as it is; a file-system error as path, what and system call; a bug as its first line', () => {
    expect(userMessage(new MoelabError('k = 9 exceeds the number of experts (4)', '$.block.ffn.router.k'))).toBe(
      '$.block.ffn.router.k: k = 9 exceeds the number of experts (4)',
    );
    const file = join(tmp(), 'plain.txt');
    writeFileSync(file, 'x');
    expect(userMessage(thrown(() => mkdirSync(join(file, 'run'), { recursive: true })))).toBe(`${join(file, 'run')}: not a directory (ENOTDIR, mkdir)`);
    expect(userMessage(new TypeError('a is undefined\n    at f (x.js:1:1)'))).toBe('error: a is undefined (MOELAB_DEBUG=1 shows the stack)');
  });

  it('`moelab train --out` under a file fails with one line naming the directory, exit code 2', async () => {
    const root = tmp();
    writeFileSync(join(root, 'tiny.json'), JSON.stringify(tinySpec));
    writeFileSync(join(root, 'blocker'), 'a file where the run directory should go');
    const text = Array.from({ length: 400 }, (_, i) => `line ${i} of some text for the corpus.`).join('\n');
    writeFileSync(join(root, 'data.txt'), text);
    const out = join(root, 'blocker', 'run');
    const r = await cli(
      'train',
      join(root, 'tiny.json'),
      '--data',
      join(root, 'data.txt'),
      '--out',
      out,
      '--steps',
      '1',
      '--batch',
      '2',
      '--seq',
      '16',
      '--backend',
      'cpu',
      '--quiet',
    );
    expect(r.code).toBe(2);
    expect(r.err.split('\n').filter(Boolean).at(-1)).toMatch(
      new RegExp(`^moelab: ${join(root, 'blocker')}(/run)?: (not a directory|file already exists) \\((ENOTDIR|EEXIST), mkdir\\)$`),
    );
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('an unknown --backend names the flag', async () => {
    const e = await cli('generate', 'ckpt', '--backend', 'quantm');
    expect(e.code).toBe(2);
    expect(e.err).toMatch(/^moelab: --backend: unknown backend "quantm"/);
  });
});
