#!/usr/bin/env node
/**
 * The Brown -> SOTU fine-tuning scenario (docs/finetune.md#the-brown-to-sotu-scenario): pretrain a small
 * MoE language model on the Brown Corpus, fine-tune it with every method for the same steps on modern
 * State-of-the-Union addresses (1946-2021), and tabulate trainable parameters, wall time, SOTU-val and
 * Brown-val bits per byte (forgetting), identity at init and base tensors changed.
 *
 *   node scripts/scenario-finetune.mjs [--out runs/scenario-finetune] [--pretrain-steps 1200] [--steps 150]
 *     [--batch 16] [--seq 128] [--eval-batches 16] [--methods full,lora,...] [--size default|small] [--backend auto]
 *
 * The base is reused when <out>/base/checkpoint exists. Writes <out>/results.md and <out>/results.json.
 * (`pnpm scenario:finetune` builds first, then runs this with the defaults.)
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
const node = await import(join(root, 'packages/node/dist/index.js'));
const { tf } = await import(join(root, 'packages/core/dist/index.js'));

const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const out = resolve(flag('out', 'runs/scenario-finetune'));
const size = flag('size', 'default');
const steps = Number(flag('steps', 150));
const pretrainSteps = Number(flag('pretrain-steps', size === 'small' ? 600 : 1200));
const batch = Number(flag('batch', 16));
const seq = Number(flag('seq', size === 'small' ? 64 : 128));
const evalBatches = Number(flag('eval-batches', 16));
const methods = flag('methods', 'full,lora,esft,perft-s,perft-d,perft-r,perft-e,smore,mov,molora,mixlora').split(',');

// The base of the scenario: d = 128, 4 layers, 4 heads, context 128, learned positions, pre-LN, tied
// embeddings, an MoE FFN in every layer (softmax top-2 of 8, renormalised, GELU experts h = 128, Switch
// balance loss 0.01). `--size small` halves width and context for a quick run.
const d = size === 'small' ? 64 : 128;
const spec = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: d,
  contextLength: seq,
  positionEmbedding: 'learned',
  tieEmbeddings: true,
  stack: { groupSize: 4 },
  block: {
    type: 'transformer',
    norm: 'pre',
    attention: { type: 'mha', heads: 4 },
    ffn: { type: 'moe', experts: 8, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: d, activation: 'gelu' } },
  },
};
// Adapter options of each method (the sizes of docs/finetune.md: LoRA r8 on W_q, W_v; PERFT-S r16; PERFT-D 4 x r8; PERFT-R Top2/4 r8; PERFT-E r8).
const options = {
  lora: { rank: 8 },
  'perft-s': { rank: 16 },
  'perft-d': { experts: 4, rank: 8 },
  'perft-r': { experts: 4, topK: 2, rank: 8 },
  'perft-e': { rank: 8 },
  mov: { experts: 4 },
  molora: { experts: 4, rank: 4 },
  mixlora: { rank: 4 },
  // S'MoRE s = [4, 4], f = [2, 2], r = [4, 8], m = 16, d_down = 16 beside each block; ESFT selects by token scores, p = 0.2.
  smore: { ranks: [4, 8], experts: [4, 4], fanout: [2, 2], gateDims: [16, 16], dDown: 16 },
};

const backend = await node.chooseBackend(flag('backend', 'auto'));
process.stderr.write(`backend: ${backend.name} — ${backend.reason}\n`);
mkdirSync(out, { recursive: true });
const registry = node.createDefaultRegistry();
const brown = new node.CorpusTokens(node.loadCorpus('brown'));
const sotu = node.domainTokens('sotu', '1946-2021');

const baseDir = join(out, 'base');
let pretrainSec;
if (!existsSync(join(baseDir, 'checkpoint', 'config.json'))) {
  const r = node.trainRun({
    registry,
    spec,
    train: {
      steps: pretrainSteps,
      batchSize: batch,
      seqLen: seq,
      lr: 2e-3,
      warmup: 100,
      minLrRatio: 0.1,
      weightDecay: 0.1,
      clip: 1,
      evalEvery: 0,
      evalBatches: 4,
      seed: 0,
    },
    data: 'brown',
    outDir: baseDir,
    label: 'pretrain (brown)',
    tokens: brown,
  });
  pretrainSec = r.wallSec;
}

const rows = [];
for (const method of methods) {
  const r = node.finetuneRun({
    registry,
    base: join(baseDir, 'checkpoint'),
    method,
    options: options[method] ?? {},
    data: 'sotu',
    domain: '1946-2021',
    general: 'brown',
    train: { steps, batchSize: batch, seqLen: seq, evalEvery: 0, evalBatches, seed: 0 },
    outDir: join(out, method),
    label: method,
    tokens: { target: sotu, general: brown },
  });
  rows.push(r);
  process.stderr.write(
    `${method}: SOTU ${r.target.before.bitsPerToken.toFixed(3)} -> ${r.target.after.bitsPerToken.toFixed(3)}, Brown ${r.general.before.bitsPerToken.toFixed(3)} -> ${r.general.after.bitsPerToken.toFixed(3)} bits/byte, ${r.wallSec.toFixed(0)} s\n`,
  );
}

const fmt = (x) => x.toFixed(3);
const signed = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(3)}`;
const full = rows.find((r) => r.method === 'full');
const header = [
  '| method | trainable params | wall (s) | SOTU-val bits/byte | Δ SOTU | Brown-val bits/byte | Δ Brown | init Δ (max abs logit) | base tensors changed |',
  '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
];
const base0 = rows[0];
const lines = [
  ...header,
  `| base (no fine-tuning) | 0 | ${pretrainSec === undefined ? '-' : pretrainSec.toFixed(0)} | ${fmt(base0.target.before.bitsPerToken)} | - | ${fmt(base0.general.before.bitsPerToken)} | - | - | - |`,
  ...rows.map((r) => {
    const dT = r.target.after.bitsPerToken - r.target.before.bitsPerToken;
    const dG = r.general.after.bitsPerToken - r.general.before.bitsPerToken;
    return `| ${r.method} | ${r.counts.trainable.toLocaleString('en-US')} | ${r.wallSec.toFixed(0)} | ${fmt(r.target.after.bitsPerToken)} | ${signed(dT)} | ${fmt(r.general.after.bitsPerToken)} | ${signed(dG)} | ${r.initDelta} | ${r.method === 'full' ? 'all' : r.changedBaseTensors.length} |`;
  }),
];
const claims = [];
const lowered = rows.filter((r) => r.target.after.bitsPerToken < r.target.before.bitsPerToken).map((r) => r.method);
claims.push(
  `lowered SOTU-val: ${lowered.length} of ${rows.length} methods${
    lowered.length < rows.length
      ? ` (not: ${rows
          .filter((r) => !lowered.includes(r.method))
          .map((r) => r.method)
          .join(', ')})`
      : ''
  }`,
);
if (full) {
  const fullForget = Math.abs(full.general.after.bitsPerToken - full.general.before.bitsPerToken);
  const less = rows.filter((r) => r !== full && Math.abs(r.general.after.bitsPerToken - r.general.before.bitsPerToken) < fullForget).map((r) => r.method);
  claims.push(`|Δ Brown-val| below full fine-tuning's (${fullForget.toFixed(3)}): ${less.length} of ${rows.length - 1} adapter methods`);
}
const setup = `base: d=${d}, 4 layers, 8 experts top-2 (h=${d}), context ${seq}, ${pretrainSteps} pretraining steps on Brown; fine-tuning: ${steps} steps of ${batch} x ${seq} bytes of SOTU 1946-2021, seed 0; eval: ${evalBatches} batches of ${batch} x ${seq} per split; backend ${tf.getBackend()}`;
const md = `${setup}\n\n${lines.join('\n')}\n\n${claims.map((c) => `- ${c}`).join('\n')}\n`;
writeFileSync(join(out, 'results.md'), md);
writeFileSync(join(out, 'results.json'), `${JSON.stringify({ setup, spec, rows: rows.map((r) => ({ ...r, losses: undefined })) }, null, 2)}\n`);
process.stdout.write(md);
