/**
 * Train several presets on the same data and token budget and print / write a side-by-side table.
 * With a time budget (and no explicit --steps), each preset's step time is measured first and every
 * preset then runs the number of steps the slowest one fits in the budget: same tokens, same
 * learning-rate schedule for all.
 */
import { join } from 'node:path';
import { buildModel, type LanguageModel, type Module, type TrainConfig, Trainer, tf } from '@moelab/core';
import { CorpusTokens, loadCorpus } from './corpus.js';
import { writeFileAtomic } from './fsutil.js';
import { createDefaultRegistry } from './registry.js';
import { type RunResult, trainRun } from './run.js';
import { formatTable, human } from './table.js';

export interface CompareOptions {
  presets: string[];
  data: string;
  outDir: string;
  timeBudgetSec?: number;
  train?: Partial<TrainConfig>;
  quiet?: boolean;
}

export interface CompareRow {
  preset: string;
  parameters: number;
  activeParameters: number;
  /** Multiply-accumulates per token of one forward pass at the training sequence length. */
  macsPerToken: number;
  steps: number;
  tokens: number;
  valLoss: number;
  valPerplexity: number;
  tokensPerSec: number;
  wallSec: number;
  /** Mean over MoE layers of the coefficient of variation of expert load (null for dense). */
  loadCV: number | null;
  maxVio: number | null;
  /** Expert usage per MoE layer over the last training step. */
  layers: { layer: string; load: number[]; cv: number; maxVio: number; dropRate: number }[];
}

export async function compareRuns(o: CompareOptions): Promise<CompareRow[]> {
  const registry = createDefaultRegistry();
  const tokens = new CorpusTokens(loadCorpus(o.data));
  const rows: CompareRow[] = [];
  let steps: number | undefined;
  if (o.timeBudgetSec && o.train?.steps === undefined) {
    // Size the token budget so that the slowest preset fits the time budget, then give every preset the
    // same number of steps (and so the same learning-rate schedule and the same tokens).
    steps = Math.min(...o.presets.map((p) => calibrateSteps(registry, p, tokens, { ...(o.train ?? {}) }, o.timeBudgetSec!)));
    if (!o.quiet) process.stderr.write(`time budget ${o.timeBudgetSec}s -> ${steps} steps per preset\n`);
  }
  for (const name of o.presets) {
    const preset = registry.preset(name, 'preset');
    const train = { ...preset.train, ...(o.train ?? {}), ...(steps !== undefined ? { steps } : {}) };
    const r: RunResult = trainRun({
      registry,
      spec: preset.spec,
      train,
      data: o.data,
      outDir: join(o.outDir, name),
      label: name,
      quiet: o.quiet,
      tokens,
    });
    const moe = r.balance;
    rows.push({
      preset: name,
      parameters: r.summary.parameters,
      activeParameters: r.summary.activeParameters,
      macsPerToken: r.model.macsPerToken(r.trainer.config.seqLen),
      steps: r.steps,
      tokens: r.steps * r.trainer.config.batchSize * r.trainer.config.seqLen * r.trainer.config.accumulate,
      valLoss: r.finalEval.loss,
      valPerplexity: r.finalEval.perplexity,
      tokensPerSec: r.tokensPerSec,
      wallSec: r.wallSec,
      loadCV: moe.length ? moe.reduce((s, b) => s + b.cv, 0) / moe.length : null,
      maxVio: moe.length ? Math.max(...moe.map((b) => b.maxVio)) : null,
      layers: moe.map((b) => ({ layer: b.layer, load: b.load.map((x) => Number(x.toFixed(4))), cv: b.cv, maxVio: b.maxVio, dropRate: b.dropRate })),
    });
    r.model.dispose();
    r.trainer.optimizer.dispose();
  }
  const headers = ['preset', 'params', 'active/token', 'MACs/token', 'steps', 'tokens', 'val loss', 'val ppl', 'tok/s', 'wall', 'load CV', 'MaxVio'];
  const body = rows.map((r) => [
    r.preset,
    human(r.parameters),
    human(r.activeParameters),
    human(r.macsPerToken),
    r.steps,
    human(r.tokens),
    r.valLoss.toFixed(4),
    r.valPerplexity.toFixed(3),
    Math.round(r.tokensPerSec),
    `${r.wallSec.toFixed(0)}s`,
    r.loadCV?.toFixed(3) ?? '-',
    r.maxVio?.toFixed(3) ?? '-',
  ]);
  const usage = rows
    .filter((r) => r.layers.length)
    .map((r) => `${r.preset} expert usage (% of assignments, last step):\n${r.layers.map((l) => `  ${l.layer}: ${usageLine(l.load)}`).join('\n')}`)
    .join('\n');
  const text = `${formatTable(headers, body)}${usage ? `\n\n${usage}` : ''}`;
  process.stdout.write(`\n${text}\n\n(data: ${o.data}, backend: ${tf.getBackend()}; runs in ${o.outDir})\n`);
  writeFileAtomic(
    join(o.outDir, 'results.md'),
    `# moelab compare\n\ndata: ${o.data}, backend: ${tf.getBackend()}, ${new Date().toISOString()}\n\n${formatTable(headers, body, true)}\n${usage ? `\n\`\`\`\n${usage}\n\`\`\`\n` : ''}`,
  );
  writeFileAtomic(join(o.outDir, 'results.json'), `${JSON.stringify({ data: o.data, backend: tf.getBackend(), rows }, null, 2)}\n`);
  return rows;
}

/**
 * One layer's expert usage: every expert's share when there are few; for large banks (MONET, PEER: thousands
 * of experts) a summary, since a list of 4,096 percentages says nothing at a glance.
 */
export function usageLine(load: readonly number[]): string {
  if (load.length <= 32) return load.map((x) => (100 * x).toFixed(0)).join(' ');
  const sorted = [...load].sort((a, b) => a - b);
  const pct = (x: number) => `${(100 * x).toFixed(3)}%`;
  const unused = load.filter((x) => x === 0).length;
  return `${load.length} experts: min ${pct(sorted[0]!)}, median ${pct(sorted[sorted.length >> 1]!)}, max ${pct(sorted.at(-1)!)}, unused ${unused}`;
}

/** Steps of `preset` that fit in `budgetSec` on this machine (measured on 3 steps after a warm-up). */
function calibrateSteps(
  registry: ReturnType<typeof createDefaultRegistry>,
  name: string,
  tokens: CorpusTokens,
  train: Partial<TrainConfig>,
  budgetSec: number,
): number {
  const preset = registry.preset(name, 'preset');
  const model = buildModel<Module & LanguageModel>(preset.spec, registry, 0);
  const tr = new Trainer(model, tokens, { ...preset.train, ...train });
  tr.trainStep();
  const t0 = performance.now();
  for (let i = 0; i < 3; i++) tr.trainStep();
  const perStep = (performance.now() - t0) / 3000;
  tr.optimizer.dispose();
  model.dispose();
  return Math.max(10, Math.floor(budgetSec / perStep));
}
