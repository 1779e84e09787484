import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from '../program.js';
import { bench } from './bench.js';
import { compare, main } from './compare.js';
import { evaluate } from './eval.js';
import { generate } from './generate.js';
import { commands, parseCommandLine } from './index.js';
import { inspect } from './inspect.js';
import { list } from './list.js';
import { esftScoresCommand } from './esft-scores.js';
import { mask } from './mask.js';
import { sweep } from './sweep.js';
import { train } from './train.js';
import { verify } from './verify.js';

/** Run the program in-process; returns the exit code and what it wrote. */
async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(argv, {
    out: (s) => {
      out += s;
    },
    err: (s) => {
      err += s;
    },
  });
  return { code, out, err };
}

describe('moelab help', () => {
  it('`moelab --help` lists every command with its summary', async () => {
    const r = await cli('--help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: moelab <command> \[options\]/);
    const names = [
      'train',
      'eval',
      'generate',
      'list',
      'inspect',
      'verify',
      'compare',
      'main',
      'sweep',
      'bench',
      'mask',
      'recipe',
      'export',
      'import',
      'esft-scores',
      'upcycle',
      'prune',
      'merge-experts',
      'steer',
      'analyse',
      'quantize',
      'finetune',
      'merge-adapter',
    ];
    expect(commands.map((c) => c.define().name()).sort()).toEqual([...names].sort());
    for (const name of names) expect(r.out).toMatch(new RegExp(`\\n  ${name}\\b.* {2,}\\S`));
  });

  it('no command prints the help and exits 1', async () => {
    const r = await cli();
    expect(r.code).toBe(1);
    expect(r.out).toContain('Commands:');
    expect(r.out).toContain('Run `moelab <command> --help` for its arguments and flags.');
  });

  it('`moelab train --help` documents every flag, including --eval-batches, --checkpoint-every and --quiet', async () => {
    const r = await cli('train', '--help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: moelab train \[options\] \[spec\]/);
    for (const flag of [
      '--preset',
      '--data',
      '--out',
      '--backend',
      '--steps',
      '--batch',
      '--seq',
      '--lr',
      '--seed',
      '--eval-every',
      '--accumulate',
      '--time-budget',
      '--resume',
    ])
      expect(r.out).toContain(`${flag} `);
    expect(r.out).toMatch(/--eval-batches <n>\s+validation batches per evaluation/);
    expect(r.out).toMatch(/--checkpoint-every <n>\s+also save the checkpoint every N steps/);
    expect(r.out).toMatch(/--quiet\s+no progress line/);
    expect(r.out).toMatch(/--data <source>[^-]*\(default:\s+"brown"\)/);
    expect(r.out).toMatch(/--backend <name>[\s\S]*?\(default:\s+"auto"\)/);
  });

  it('every flag of every command has a description', () => {
    for (const c of commands) {
      const cmd = c.define();
      for (const o of cmd.options) expect(o.description, `${cmd.name()} ${o.flags}`).not.toBe('');
      for (const a of cmd.registeredArguments) expect(a.description, `${cmd.name()} <${a.name()}>`).not.toBe('');
    }
  });

  it('`moelab help mask` equals `moelab mask --help`', async () => {
    const a = await cli('help', 'mask');
    const b = await cli('mask', '--help');
    expect(a.out).toBe(b.out);
    expect(b.out).toContain('--stats-tokens <n>');
  });
});

describe('moelab usage errors: one line, exit code 2, close names', () => {
  it('an unknown flag suggests the close one', async () => {
    const r = await cli('train', 'x.json', '--eval-batchs', '2');
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      'moelab: unknown option "--eval-batchs" for `moelab train`. Did you mean: --eval-batches, --batch, --eval-every? See `moelab train --help`.\n',
    );
    expect(r.out).toBe('');
  });

  it('a typo in a command suggests the close name', async () => {
    const r = await cli('trian', '--preset', 'moe-tiny');
    expect(r.code).toBe(2);
    expect(r.err).toBe('moelab: unknown command "trian". Did you mean: train, main? Run `moelab --help` for the list.\n');
  });

  it('`moelab help` of a typo suggests the close name', async () => {
    const r = await cli('help', 'mask2');
    expect(r.code).toBe(2);
    expect(r.err).toBe('moelab: unknown command "mask2". Did you mean: mask, main? Run `moelab --help` for the list.\n');
    expect(r.out).toBe('');
  });

  it('a recipe with a phase referring to a missing phase: one line naming the JSON path', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'moelab-cli-recipe-'));
    const file = join(dir, 'r.json');
    writeFileSync(
      file,
      JSON.stringify({
        corpus: { domains: { a: 'a.txt' } },
        model: { type: 'transformer-lm' },
        phases: [
          { type: 'train', name: 'seed', steps: 2 },
          { type: 'train', name: 'branch', from: 'seeed', steps: 2 },
        ],
      }),
    );
    const r = await cli('recipe', file, '--check');
    expect(r.code).toBe(2);
    expect(r.err).toBe('moelab: $.phases[1].from: no phase named "seeed". Did you mean: seed?\n');
    const missing = await cli('recipe', join(dir, 'nope.json'));
    expect(missing.code).toBe(2);
    expect(missing.err).toBe(`moelab: ${join(dir, 'nope.json')}: no such recipe file\n`);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a flag of another command is refused with that command named', async () => {
    const r = await cli('generate', 'ckpt', '--steps', '3');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^moelab: unknown option "--steps" for `moelab generate`/);
  });

  it('a missing argument names it and shows the usage', async () => {
    const r = await cli('eval');
    expect(r.code).toBe(2);
    expect(r.err).toBe("moelab: missing required argument 'checkpoint' (usage: moelab eval [options] <checkpoint>)\n");
  });

  it('a bad number names the flag and the value', async () => {
    const r = await cli('generate', 'ckpt', '--temperature', 'hot');
    expect(r.code).toBe(2);
    expect(r.err).toBe('moelab: --temperature expects a number, got "hot"\n');
  });

  it('MOELAB_DEBUG=1 adds the stack', async () => {
    process.env.MOELAB_DEBUG = '1';
    try {
      const r = await cli('list', 'routr');
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/\n\s+at /);
      expect(r.err).toMatch(/\nmoelab: unknown kind "routr"\. Did you mean: router\?/);
    } finally {
      delete process.env.MOELAB_DEBUG;
    }
  });
});

describe('each command parses its flags into typed options', () => {
  it('train', () => {
    const { args, opts } = parseCommandLine(train, [
      'spec.json',
      '--steps',
      '40',
      '--batch',
      '4',
      '--seq',
      '32',
      '--lr',
      '3e-3',
      '--seed',
      '7',
      '--eval-every',
      '0',
      '--stats-every',
      '1',
      '--eval-batches',
      '2',
      '--accumulate',
      '2',
      '--time-budget',
      '1.5',
      '--checkpoint-every',
      '10',
      '--quiet',
      '--out',
      'runs/x',
    ]);
    expect(args).toEqual(['spec.json']);
    expect(opts).toEqual({
      steps: 40,
      batch: 4,
      seq: 32,
      lr: 0.003,
      seed: 7,
      evalEvery: 0,
      statsEvery: 1,
      evalBatches: 2,
      accumulate: 2,
      timeBudget: 1.5,
      checkpointEvery: 10,
      quiet: true,
      out: 'runs/x',
      data: 'brown',
      backend: 'auto',
    });
    expect(parseCommandLine(train, ['--preset', 'moe-tiny', '--resume']).opts).toMatchObject({ preset: 'moe-tiny', resume: true });
    expect(() => parseCommandLine(train, ['--steps', 'many'])).toThrow('--steps expects an integer, got "many"');
    expect(() => parseCommandLine(train, ['--lr', '1e-3x'])).toThrow('--lr expects a number, got "1e-3x"');
  });

  it('eval', () => {
    const { args, opts } = parseCommandLine(evaluate, ['runs/x/checkpoint', '--mask', 'm.json', '--eval-batches', '3', '--json', '--backend', 'cpu']);
    expect(args).toEqual(['runs/x/checkpoint']);
    expect(opts).toEqual({ mask: 'm.json', evalBatches: 3, batch: 16, json: true, backend: 'cpu' });
    expect(parseCommandLine(evaluate, ['c', '--data', 'sotu', '--seq', '64']).opts).toMatchObject({ data: 'sotu', seq: 64, evalBatches: 16 });
  });

  it('generate', () => {
    expect(parseCommandLine(generate, ['c']).opts).toEqual({
      prompt: 'The ',
      tokens: 200,
      temperature: 0.8,
      topK: 0,
      seed: 0,
      cache: true,
      backend: 'auto',
      scmoeRank: 2,
      scmoeAlpha: 0.1,
    });
    expect(parseCommandLine(generate, ['c', '--scmoe', '0.5', '--scmoe-rank', '1']).opts).toMatchObject({ scmoe: 0.5, scmoeRank: 1, scmoeAlpha: 0.1 });
    expect(parseCommandLine(generate, ['c', '--no-cache']).opts.cache).toBe(false);
    expect(parseCommandLine(generate, ['c', '--prompt', 'the ', '--tokens', '20', '--top-k', '5', '--temperature', '0']).opts).toMatchObject({
      prompt: 'the ',
      tokens: 20,
      topK: 5,
      temperature: 0,
    });
  });

  it('list', () => {
    expect(parseCommandLine(list, ['router', 'top', '--json'])).toEqual({ args: ['router', 'top'], opts: { json: true } });
    expect(parseCommandLine(list, [])).toEqual({ args: [undefined, undefined], opts: {} });
  });

  it('inspect', () => {
    expect(parseCommandLine(inspect, ['c', '--text', 'the fox', '--json'])).toEqual({
      args: ['c'],
      opts: { text: 'the fox', json: true, data: 'brown', backend: 'auto' },
    });
  });

  it('verify', () => {
    expect(parseCommandLine(verify, ['a.json', 'b.json', '--json'])).toEqual({ args: [['a.json', 'b.json']], opts: { json: true, backend: 'auto' } });
    expect(parseCommandLine(verify, []).args).toEqual([[]]);
  });

  it('compare and main', () => {
    const c = parseCommandLine(compare, ['dense-tiny', 'moe-tiny', '--time-budget', '120', '--steps', '5']);
    expect(c.args).toEqual([['dense-tiny', 'moe-tiny']]);
    expect(c.opts).toEqual({ timeBudget: 120, steps: 5, data: 'brown', backend: 'auto' });
    expect(parseCommandLine(main, []).opts).toEqual({ timeBudget: 150, out: 'runs/main', data: 'brown', backend: 'auto' });
    expect(() => parseCommandLine(main, ['moe-tiny'])).toThrow(/too many arguments/);
  });

  it('sweep', () => {
    expect(parseCommandLine(sweep, ['--router', 'softmax-topk, expert-choice,', '--steps', '10']).opts).toEqual({
      router: ['softmax-topk', 'expert-choice'],
      steps: 10,
      preset: 'moe-tiny',
      data: 'brown',
      backend: 'auto',
    });
  });

  it('bench', () => {
    expect(parseCommandLine(bench, []).opts).toEqual({ backend: 'auto' });
    expect(parseCommandLine(bench, ['--json']).opts).toEqual({ backend: 'auto', json: 'bench.json' });
    expect(parseCommandLine(bench, ['--json', 'out.json', '--only', 'a dense,b moe', '--quick', '--backend', 'moelab-cpu,wasm']).opts).toEqual({
      backend: 'moelab-cpu,wasm',
      json: 'out.json',
      only: ['a dense', 'b moe'],
      quick: true,
    });
  });

  it('esft-scores', () => {
    const { args, opts } = parseCommandLine(esftScoresCommand, [
      'c',
      '--data',
      'sotu',
      '--tokens',
      '4096',
      '--score',
      'gate',
      '--p',
      '0.15',
      '--shared-experts',
    ]);
    expect(args).toEqual(['c']);
    expect(opts).toEqual({ data: 'sotu', tokens: 4096, score: 'gate', p: 0.15, sharedExperts: true, batch: 8, out: 'esft', backend: 'auto' });
    expect(() => parseCommandLine(esftScoresCommand, ['c', '--tokens', 'many'])).toThrow('--tokens expects an integer, got "many"');
  });

  it('mask', () => {
    const { args, opts } = parseCommandLine(mask, [
      'c',
      '--domain',
      'all',
      '--fraction',
      '0.25',
      '--score',
      'skew',
      '--min-share',
      '0.1',
      '--domain-tokens',
      '96',
      '--stats-tokens',
      '512',
      '--level',
      '1',
    ]);
    expect(args).toEqual(['c']);
    expect(opts).toEqual({
      domain: 'all',
      fraction: 0.25,
      score: 'skew',
      minShare: 0.1,
      domainTokens: 96,
      statsTokens: 512,
      level: 1,
      batch: 8,
      out: 'mask.json',
      backend: 'auto',
    });
  });
});
