import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildModel, loadState, type NodeSpec, stateTensors } from '@moelab/core';
import { beforeAll, expect, vi } from 'vitest';
import { type Model, saveCheckpoint } from '../src/checkpoint.js';
import { createDefaultRegistry } from '../src/registry.js';

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

/**
 * Run the moelab program in-process (no built CLI needed); returns the exit code, stdout, the error
 * line and `log`, what the commands wrote to stderr themselves (backend report, progress, notes). The
 * program module loads on first use, so files that only spawn the built CLI do not pay for it.
 */
export async function cliInProcess(...argv: string[]): Promise<{ code: number; out: string; err: string; log: string }> {
  const { runCli: run } = await import('../src/program.js');
  let out = '';
  let err = '';
  let log = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s);
    return true;
  });
  const errSpy = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    log += String(s);
    return true;
  });
  try {
    const code = await run(argv, { out: (s) => (out += s), err: (s) => (err += s) });
    return { code, out, err, log };
  } finally {
    spy.mockRestore();
    errSpy.mockRestore();
  }
}

/**
 * A word-level BPE tokenizer.json over lower-case letters and '.' (30 tokens, `the` merged), as a
 * Hugging Face checkpoint would bring; `vocab` maps each token to its id.
 */
export function bpeTokenizerJson(): { json: string; vocab: Record<string, number> } {
  const vocab: Record<string, number> = { '[UNK]': 0 };
  for (const c of 'abcdefghijklmnopqrstuvwxyz.') vocab[c] = Object.keys(vocab).length;
  vocab.th = Object.keys(vocab).length;
  vocab.the = Object.keys(vocab).length;
  const json = JSON.stringify({
    version: '1.0',
    added_tokens: [],
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'BPE', vocab, merges: ['t h', 'th e'], unk_token: '[UNK]' },
  });
  return { json, vocab };
}

/**
 * A tiny decoder in the Hugging Face layouts' shape (RMSNorm pre-norm blocks, mha with RoPE, SwiGLU
 * experts): Mixtral-style by default (4 experts, top-2 renormalised, GQA 4/2), with `attention` and
 * `ffn` fields merged over those defaults and `extra` over the model's.
 */
export function hfTinySpec(opts: { attention?: Record<string, unknown>; ffn?: Record<string, unknown>; extra?: Record<string, unknown> } = {}): NodeSpec {
  return {
    type: 'transformer-lm',
    vocabSize: 256,
    dModel: 16,
    contextLength: 16,
    stack: { groupSize: 2 },
    block: {
      type: 'transformer',
      normType: { type: 'rmsnorm', eps: 1e-5 },
      attention: { type: 'mha', heads: 4, kvHeads: 2, ...opts.attention },
      ffn: { type: 'moe', experts: 4, router: { type: 'mixtral' }, expert: { type: 'glu', hidden: 16 }, ...opts.ffn },
    },
    outNorm: { type: 'rmsnorm', eps: 1e-5 },
    ...opts.extra,
  } as NodeSpec;
}

/** Move every tensor of the model (norm gains and biases too) off its init by a deterministic ±`amount`, so a misplaced tensor shows. */
export function perturbWeights(model: Model, amount = 0.05, seed = 7): void {
  let x = seed;
  const state = stateTensors(model);
  for (const t of state.values()) {
    const data = t.data.slice();
    for (let i = 0; i < data.length; i++) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      data[i]! += ((x / 2 ** 31) * 2 - 1) * amount;
    }
    t.data = data;
  }
  loadState(model, state);
}

/** The model's tensors as name -> { shape, float32 data } (a TensorSource's input: memorySource). */
export function weightsOf(model: Model): Map<string, { shape: number[]; data: Float32Array }> {
  return new Map([...stateTensors(model)].map(([n, t]) => [n, { shape: t.shape, data: t.data as Float32Array }]));
}

/**
 * Build `spec` (initialised from `seed`, weights perturbed unless `perturb` is false) and save it as a
 * checkpoint at `dir` (step `step`); returns the model, which the caller disposes. The checkpoint
 * records run seed 0, as `moelab import` does, so that evaluations of both draw the same batches.
 */
export function saveTinyCheckpoint(
  dir: string,
  spec: NodeSpec,
  opts: { seed?: number; step?: number; perturb?: boolean; registry?: ReturnType<typeof createDefaultRegistry> } = {},
): Model {
  const model = buildModel<Model>(spec, opts.registry ?? createDefaultRegistry(), opts.seed ?? 0);
  if (opts.perturb !== false) perturbWeights(model, 0.05, (opts.seed ?? 0) + 7);
  saveCheckpoint(dir, model, { spec, step: opts.step ?? 0, seed: 0 });
  return model;
}
