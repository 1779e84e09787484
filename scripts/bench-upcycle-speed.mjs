#!/usr/bin/env node
/**
 * Training speed of the upcycling recipe's toy model against PyTorch, side by side on this machine
 * (docs/recipes.md#speed-against-pytorch). Two rows: the dense seed (SwiGLU FFN, hidden 128) and the
 * merged MoE that BTX produces from it (4 SwiGLU experts of hidden 128, softmax top-2 renormalised,
 * switch balance 0.01), both in the recipe's 3-layer parallel-block model at batch 32 x 64 tokens.
 *
 *   node scripts/bench-upcycle-speed.mjs [--rounds 3] [--steps 30] [--backend moelab-cpu]
 *     [--python /usr/bin/python3] [--json out.json]
 *
 * Each round runs moelab's step (`moelab train`, median tokens/s over the steps after the first five),
 * then the PyTorch twin (packages/upcycle/scripts/torch_toy_lm.py, same model, AdamW, clipping), so drift
 * of the machine's speed hits both sides alike. Without a Python that imports torch the PyTorch column
 * is skipped with the reason. Run it on a quiet machine: both sides use 2 threads.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const rounds = Number(flag('rounds', 3));
const steps = Number(flag('steps', 30));
const backend = flag('backend', 'moelab-cpu');
const python = flag('python', '/usr/bin/python3');
const jsonOut = flag('json', undefined);
const warmup = 5;

const recipe = JSON.parse(readFileSync(join(root, 'recipes/upcycle-toy.json'), 'utf8'));
const dense = recipe.model;
const moe = {
  ...dense,
  block: {
    ...dense.block,
    ffn: {
      type: 'moe',
      experts: 4,
      router: { type: 'softmax-topk', k: 2, renormalize: true, balanceCoef: 0.01 },
      expert: { ...dense.block.ffn, type: 'mlp' },
    },
  },
};

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const work = mkdtempSync(join(tmpdir(), 'moelab-upcycle-speed-'));
const cli = join(root, 'packages/node/dist/cli.js');

function moelabTokensPerSec(name, spec) {
  const file = join(work, `${name}.json`);
  writeFileSync(file, JSON.stringify(spec));
  const out = join(work, `run-${name}`);
  rmSync(out, { recursive: true, force: true });
  execFileSync(
    process.execPath,
    [
      cli,
      'train',
      file,
      '--backend',
      backend,
      '--steps',
      String(steps + warmup),
      '--batch',
      '32',
      '--seq',
      '64',
      '--eval-batches',
      '1',
      '--quiet',
      '--out',
      out,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const rates = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .filter((r) => r.type === 'train' && r.step > warmup)
    .map((r) => r.tokensPerSec);
  return median(rates);
}

function torchAvailable() {
  const r = spawnSync(python, ['-c', 'import torch'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : `${python} cannot import torch (${(r.error?.message ?? r.stderr ?? '').trim().split('\n').pop()})`;
}

function torchTokensPerSec() {
  const file = join(work, 'torch.json');
  execFileSync(
    python,
    [join(root, 'packages/upcycle/scripts/torch_toy_lm.py'), '--threads', '2', '--steps', String(steps), '--warmup', String(warmup), '--json', file],
    {
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  return JSON.parse(readFileSync(file, 'utf8')).tokensPerSec;
}

const noTorch = torchAvailable();
if (noTorch) console.log(`pytorch column skipped: ${noTorch}`);
const samples = { dense: { moelab: [], torch: [] }, 'btx-moe': { moelab: [], torch: [] } };
for (let r = 1; r <= rounds; r++) {
  samples.dense.moelab.push(moelabTokensPerSec('dense', dense));
  samples['btx-moe'].moelab.push(moelabTokensPerSec('btx-moe', moe));
  if (!noTorch) {
    const t = torchTokensPerSec();
    samples.dense.torch.push(t.dense);
    samples['btx-moe'].torch.push(t['btx-moe']);
  }
  const last = (xs) => (xs.length ? xs[xs.length - 1].toFixed(0) : '-');
  console.log(
    `round ${r}/${rounds}: dense ${last(samples.dense.moelab)} vs ${last(samples.dense.torch)}, btx-moe ${last(samples['btx-moe'].moelab)} vs ${last(samples['btx-moe'].torch)} tokens/s (moelab vs pytorch)`,
  );
}

const rows = Object.entries(samples).map(([row, s]) => {
  const ours = median(s.moelab);
  const theirs = s.torch.length ? median(s.torch) : undefined;
  return { row, moelab: ours, pytorch: theirs, ratio: theirs ? ours / theirs : undefined };
});
console.log(`\n| row     | moelab (${backend}) tokens/s | PyTorch tokens/s | ratio |`);
console.log('| ------- | ---: | ---: | ---: |');
for (const r of rows) console.log(`| ${r.row} | ${r.moelab.toFixed(0)} | ${r.pytorch?.toFixed(0) ?? '-'} | ${r.ratio ? `${r.ratio.toFixed(2)}x` : '-'} |`);
if (jsonOut) writeFileSync(jsonOut, `${JSON.stringify({ backend, rounds, steps, samples, rows }, null, 1)}\n`);
rmSync(work, { recursive: true, force: true });
