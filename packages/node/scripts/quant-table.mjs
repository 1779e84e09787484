#!/usr/bin/env node
/**
 * The measured table (a) of packages/compress/README.md: validation perplexity against the code width
 * for a trained MoE (routed experts only; every weight) and its dense twin (the FFN only; every
 * weight), with the checkpoint size and the packed size of the quantized tensors, plus 2-bit rows
 * with quantization-aware training. Every row is the `moelab quantize` then `moelab eval` commands
 * printed by this script.
 * Usage (repository root, after `pnpm build`):
 *   nice -n 10 node packages/node/scripts/quant-table.mjs MOE_CHECKPOINT DENSE_CHECKPOINT [OUT.json]
 * Settings: BITS=8,4,3,2, EVAL_BATCHES=8, QAT_STEPS=200 (0 = no QAT rows), QAT_DATA=brown, WORK (scratch
 * directory for the quantized checkpoints, default a fresh one under the system temp dir).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const [moe, dense, outJson] = process.argv.slice(2);
if (!moe || !dense) {
  process.stderr.write('usage: quant-table.mjs MOE_CHECKPOINT DENSE_CHECKPOINT [OUT.json]\n');
  process.exit(2);
}
const cli = resolve(dirname(fileURLToPath(import.meta.url)), '../dist/cli.js');
const bits = (process.env.BITS ?? '8,4,3,2').split(',').map(Number);
const evalBatches = process.env.EVAL_BATCHES ?? '8';
const qatSteps = Number(process.env.QAT_STEPS ?? 200);
const qatData = process.env.QAT_DATA ?? 'brown';
const work = process.env.WORK ?? mkdtempSync(join(tmpdir(), 'moelab-quant-table-'));
const t0 = Date.now();
const log = (s) => process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0)}s] ${s}\n`);
const moelab = (args) => {
  log(`moelab ${args.join(' ')}`);
  return JSON.parse(
    execFileSync(process.execPath, [cli, ...args, '--json'], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .at(-1),
  );
};
const evaluate = (ckpt) => moelab(['eval', ckpt, '--eval-batches', evalBatches]).perplexity;

const columns = [
  { key: 'moe-experts', ckpt: moe, targets: undefined },
  { key: 'moe-all', ckpt: moe, targets: '**' },
  { key: 'dense-ffn', ckpt: dense, targets: '**.ffn.**' },
  { key: 'dense-all', ckpt: dense, targets: '**' },
];
const base = { moe: evaluate(moe), dense: evaluate(dense) };
const rows = [];
const run = (col, b, extra = []) => {
  const out = join(work, `${col.key}-${b}${extra.length ? '-qat' : ''}`);
  const q = moelab(['quantize', col.ckpt, '--bits', String(b), ...(col.targets ? ['--targets', col.targets] : []), ...extra, '--out', out]);
  const ppl = evaluate(out);
  rows.push({ column: col.key, bits: b, qat: extra.length > 0, perplexity: ppl, ...q, checkpointBytesAfter: statSync(join(out, 'model.safetensors')).size });
  rmSync(out, { recursive: true, force: true });
  log(`${col.key} ${b} bits${extra.length ? ' qat' : ''}: ppl ${ppl.toFixed(3)}`);
};
for (const b of bits) for (const col of columns) run(col, b);
if (qatSteps > 0) for (const col of [columns[0], columns[2]]) run(col, 2, ['--qat-steps', String(qatSteps), '--data', qatData]);

const pct = (a, b) => `${a >= b ? '+' : ''}${((100 * (a - b)) / b).toFixed(1)}%`;
const cell = (col, b, qat = false) => {
  const r = rows.find((x) => x.column === col.key && x.bits === b && x.qat === qat);
  if (!r) return '-';
  const ref = col.ckpt === moe ? base.moe : base.dense;
  return `${r.perplexity.toFixed(3)} (${pct(r.perplexity, ref)})`;
};
const lines = ['| bits | MoE, experts only | MoE, all weights | dense, FFN only | dense, all weights |', '| --- | --- | --- | --- | --- |'];
lines.push(`| fp32 | ${base.moe.toFixed(3)} | ${base.moe.toFixed(3)} | ${base.dense.toFixed(3)} | ${base.dense.toFixed(3)} |`);
for (const b of bits) lines.push(`| ${b} | ${columns.map((c) => cell(c, b)).join(' | ')} |`);
if (qatSteps > 0) lines.push(`| 2 + QAT ${qatSteps} steps | ${cell(columns[0], 2, true)} | - | ${cell(columns[2], 2, true)} | - |`);
lines.push('', '| bits | expert weights packed (bytes) | of fp32 | MoE model.safetensors (bytes) |', '| --- | --- | --- | --- |');
for (const b of bits) {
  const r = rows.find((x) => x.column === 'moe-experts' && x.bits === b && !x.qat);
  lines.push(
    `| ${b} | ${r.quantizedPackedBytes} | ${((100 * r.quantizedPackedBytes) / r.quantizedFloatBytes).toFixed(1)}% | ${r.checkpointBytesBefore} -> ${r.checkpointBytesAfter} |`,
  );
}
process.stdout.write(`${lines.join('\n')}\n`);
if (outJson) writeFileSync(outJson, `${JSON.stringify({ moe, dense, base, rows }, null, 2)}\n`);
if (!process.env.WORK) rmSync(work, { recursive: true, force: true });
log('done');
