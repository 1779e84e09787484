#!/usr/bin/env node
/**
 * The `moelab` command line. Every command prints a clear message (never a stack trace) on bad input;
 * `MOELAB_DEBUG=1` shows the stack.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  ByteTokenizer,
  forwardContext,
  generateTokens,
  MoelabError,
  type NodeSpec,
  Rng,
  tf,
  type TrainConfig,
  modelSummary,
  mergeRouting,
  routingMetrics,
} from '@moelab/core';
import { chooseBackend } from './backends.js';
import { loadCheckpoint } from './checkpoint.js';
import { compareRuns } from './compare.js';
import { CorpusTokens, loadCorpus } from './corpus.js';
import { createDefaultRegistry } from './registry.js';
import { trainRun } from './run.js';
import { formatTable, human } from './table.js';
import { verifyFiles } from './verify.js';

const HELP = `moelab — a lab for Mixture-of-Experts models

Usage: moelab <command> [options]

Commands:
  train [spec.json]       train a model (a spec file or --preset NAME) on --data
  eval <checkpoint>       validation loss and perplexity of a checkpoint (--mask mask.json: with experts masked)
  generate <checkpoint>   sample text (--prompt, --tokens, --temperature, --top-k; KV-cached, --no-cache re-runs the window per token)
  list [kind] [pattern]   registry contents (--json for machine-readable output)
  inspect <checkpoint>    spec, parameter counts and per-layer routing on a text (--text)
  verify <fixture.json…>  check golden fixtures against this implementation
  compare <preset…>       train presets on the same data and budget, print a table
  main                    the demo: compare dense-tiny and moe-tiny (what \`pnpm start\` runs)
  sweep --router a,b,c    train --preset (default moe-tiny) once per router, compare ppl, MaxVio, drops
  bench                   the PyTorch anchor's workloads on each backend (--json out.json, --only a,b, --quick, --backend a,b)
  mask <checkpoint>       find the experts specialised in --domain LABEL, mask them, print per-domain
                          validation perplexity before/after and write the mask (--out, default mask.json);
                          --fraction F (default 0.1 per layer) or --threshold S, --score share-diff|share-ratio|skew,
                          --min-share X (candidates carry >= X of the domain's assignments; default 0.5/E),
                          --domain-tokens N (tokens per domain, default 8192); --domain all: mask each
                          domain in turn and print the specificity table (--level N: labels cut to N
                          '/'-parts, e.g. 1 = SOTU eras); --stats-tokens N: tokens per domain for the statistics

Common options:
  --backend auto|NAME     tfjs backend (auto: tensorflow > moelab-cpu > wasm > cpu)
  --data brown|sotu|PATH  training text (default brown)
  --out DIR               run directory (default runs/<name>)
  --steps N --batch N --seq N --lr X --seed N --eval-every N --accumulate N
  --stats-every N         routing statistics in metrics.jsonl at step 1, every N-th and the last step
                          (default 10; 1 = every step)
  --time-budget SECONDS   stop a run early after this long
  --resume                continue the checkpoint in --out exactly
  -h, --help
`;

const options = {
  preset: { type: 'string' },
  data: { type: 'string' },
  out: { type: 'string' },
  backend: { type: 'string', default: 'auto' },
  steps: { type: 'string' },
  batch: { type: 'string' },
  seq: { type: 'string' },
  lr: { type: 'string' },
  seed: { type: 'string' },
  'eval-every': { type: 'string' },
  'stats-every': { type: 'string' },
  'eval-batches': { type: 'string' },
  accumulate: { type: 'string' },
  'time-budget': { type: 'string' },
  'checkpoint-every': { type: 'string' },
  resume: { type: 'boolean' },
  json: { type: 'boolean' },
  prompt: { type: 'string' },
  tokens: { type: 'string' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'no-cache': { type: 'boolean' },
  text: { type: 'string' },
  quiet: { type: 'boolean' },
  only: { type: 'string' },
  router: { type: 'string' },
  quick: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  domain: { type: 'string' },
  fraction: { type: 'string' },
  threshold: { type: 'string' },
  score: { type: 'string' },
  mask: { type: 'string' },
  'domain-tokens': { type: 'string' },
  'min-share': { type: 'string' },
  level: { type: 'string' },
  'stats-tokens': { type: 'string' },
} as const;

type Opts = { [K in keyof typeof options]?: (typeof options)[K]['type'] extends 'boolean' ? boolean : string };

function num(v: string | undefined, flag: string, integer = true): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new MoelabError(`--${flag} expects ${integer ? 'an integer' : 'a number'}, got "${v}"`);
  return n;
}

function trainOverrides(o: Opts): Partial<TrainConfig> {
  const t: Partial<TrainConfig> = {
    steps: num(o.steps, 'steps'),
    batchSize: num(o.batch, 'batch'),
    seqLen: num(o.seq, 'seq'),
    lr: num(o.lr, 'lr', false),
    seed: num(o.seed, 'seed'),
    evalEvery: num(o['eval-every'], 'eval-every'),
    statsEvery: num(o['stats-every'], 'stats-every'),
    evalBatches: num(o['eval-batches'], 'eval-batches'),
    accumulate: num(o.accumulate, 'accumulate'),
  };
  return Object.fromEntries(Object.entries(t).filter(([, v]) => v !== undefined));
}

function readSpecFile(path: string): NodeSpec {
  if (!existsSync(path)) throw new MoelabError('no such file', path);
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, path);
  }
}

async function backend(o: Opts, quiet = false): Promise<void> {
  const choice = await chooseBackend(o.backend ?? 'auto');
  if (!quiet) process.stderr.write(`backend: ${choice.name} — ${choice.reason}\n`);
}

async function cmdTrain(args: string[], o: Opts): Promise<void> {
  const registry = createDefaultRegistry();
  let spec: NodeSpec;
  let train: Partial<TrainConfig> = {};
  let name: string;
  if (o.resume) {
    if (!o.out) throw new MoelabError('--resume needs --out DIR (the run directory to continue)');
    spec = {} as NodeSpec;
    name = o.out;
  } else if (o.preset) {
    const p = registry.preset(o.preset, '--preset');
    spec = p.spec;
    train = p.train;
    name = o.preset;
  } else if (args[0]) {
    spec = readSpecFile(args[0]);
    name = args[0].replace(/^.*\//, '').replace(/\.json$/, '');
  } else throw new MoelabError('give a model spec file or --preset NAME (see `moelab list preset`)');
  await backend(o);
  const outDir = resolve(o.out ?? join('runs', name));
  const r = trainRun({
    registry,
    spec,
    train: { ...train, ...trainOverrides(o) },
    data: o.data ?? 'brown',
    outDir,
    resume: o.resume,
    timeBudgetSec: num(o['time-budget'], 'time-budget', false),
    checkpointEvery: num(o['checkpoint-every'], 'checkpoint-every'),
    label: name,
    quiet: o.quiet,
  });
  process.stdout.write(
    `${name}: ${r.steps} steps, val loss ${r.finalEval.loss.toFixed(4)} (ppl ${r.finalEval.perplexity.toFixed(2)}), ${Math.round(r.tokensPerSec)} tok/s, ${human(r.summary.parameters)} params (${human(r.summary.activeParameters)} active)\ncheckpoint: ${join(outDir, 'checkpoint')}\nmetrics: ${join(outDir, 'metrics.jsonl')}\n`,
  );
}

async function cmdEval(args: string[], o: Opts): Promise<void> {
  if (!args[0]) throw new MoelabError('usage: moelab eval <checkpoint-dir> [--data brown|sotu|PATH]');
  await backend(o, o.json);
  const { model, config } = loadCheckpoint(args[0], createDefaultRegistry());
  const data = new CorpusTokens(loadCorpus(o.data ?? config.train?.data ?? 'brown'));
  const { Trainer } = await import('@moelab/core');
  const seqLen = num(o.seq, 'seq') ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
  if (o.mask) {
    const { evaluateWithMask, maskedCount, maskOf, readMaskFile } = await import('./specialise.js');
    const file = readMaskFile(o.mask);
    const ev = evaluateWithMask(model, data, {
      seed: config.seed ?? 0,
      seqLen,
      batchSize: num(o.batch, 'batch') ?? 16,
      batches: num(o['eval-batches'], 'eval-batches') ?? 16,
      mask: maskOf(file),
    });
    const masked = { file: o.mask, domain: file.domain, experts: maskedCount(file), layers: Object.keys(file.layers).length };
    if (o.json) process.stdout.write(`${JSON.stringify({ ...ev, step: config.step, masked })}\n`);
    else
      process.stdout.write(
        `step ${config.step}: val loss ${ev.loss.toFixed(4)}, perplexity ${ev.perplexity.toFixed(3)}, ${ev.bitsPerToken.toFixed(3)} bits/byte (${masked.experts} experts masked in ${masked.layers} layers, domain "${file.domain}")\n`,
      );
    return;
  }
  const ev = new Trainer(model, data, {
    seqLen,
    batchSize: num(o.batch, 'batch') ?? 16,
    seed: config.seed,
    evalBatches: num(o['eval-batches'], 'eval-batches') ?? 16,
  }).evaluate();
  if (o.json) process.stdout.write(`${JSON.stringify({ ...ev, step: config.step })}\n`);
  else
    process.stdout.write(
      `step ${config.step}: val loss ${ev.loss.toFixed(4)}, perplexity ${ev.perplexity.toFixed(3)}, ${ev.bitsPerToken.toFixed(3)} bits/byte\n`,
    );
}

async function cmdMask(args: string[], o: Opts): Promise<void> {
  if (!args[0] || !o.domain)
    throw new MoelabError(
      'usage: moelab mask <checkpoint-dir> --domain LABEL [--data brown|sotu|PATH] [--fraction 0.1 | --threshold S] [--score share-diff|share-ratio|skew] [--out mask.json]',
    );
  const sp = await import('./specialise.js');
  const score = (o.score ?? 'share-diff') as import('./specialise.js').SpecialisationScore;
  if (!sp.SPECIALISATION_SCORES.includes(score)) throw new MoelabError(`--score must be one of ${sp.SPECIALISATION_SCORES.join(', ')}, got "${o.score}"`);
  const fraction = num(o.fraction, 'fraction', false);
  const threshold = num(o.threshold, 'threshold', false);
  const minShare = num(o['min-share'], 'min-share', false);
  if (minShare !== undefined && !(minShare >= 0 && minShare <= 1)) throw new MoelabError(`--min-share must be in [0, 1], got ${minShare}`);
  if (fraction !== undefined && threshold !== undefined) throw new MoelabError('give --fraction or --threshold, not both');
  if (fraction !== undefined && !(fraction > 0 && fraction <= 1)) throw new MoelabError(`--fraction must be in (0, 1], got ${fraction}`);
  await backend(o, o.json);
  const { model, config } = loadCheckpoint(args[0], createDefaultRegistry());
  const dataName = o.data ?? config.train?.data ?? 'brown';
  const corpus = loadCorpus(dataName);
  const all = o.domain === 'all';
  const level = all ? num(o.level, 'level') : sp.labelLevel(corpus, o.domain);
  const maskable = sp.maskableLayers(model);
  if (maskable.size === 0) throw new MoelabError('the model has no layer whose experts can be masked (moe, monet, peer, fff)', args[0]);
  const seqLen = num(o.seq, 'seq') ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
  const common = { seqLen, level, maxTokens: num(o['domain-tokens'], 'domain-tokens') ?? 8192, batchSize: num(o.batch, 'batch') ?? 8 };
  const statsTokens = num(o['stats-tokens'], 'stats-tokens');
  if (all) {
    const { effects } = sp.maskEachDomain(model, corpus, { ...common, statsTokens, score, fraction, threshold, minShare });
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ data: dataName, score, fraction, threshold, minShare, effects }, null, 2)}\n`);
      return;
    }
    const pc = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)}%`;
    const n = effects.length;
    process.stdout.write(
      `each domain's experts masked in turn (${score}, ${threshold !== undefined ? `threshold ${threshold}` : `fraction ${fraction ?? 0.1}`}); validation perplexity change:\n`,
    );
    process.stdout.write(
      `${formatTable(
        ['masked domain', 'experts masked', 'on it', `mean on the other ${n - 1}`, 'largest other', 'rank'],
        effects.map((e) => [e.domain, e.maskedExperts, pc(e.target), pc(e.othersMean), pc(e.othersMax), `${e.rank} of ${n}`]),
      )}\n`,
    );
    const meanRank = effects.reduce((a, e) => a + e.rank, 0) / n;
    process.stdout.write(`\nmean rank ${meanRank.toFixed(2)} (1 = perfectly domain-specific, ${((n + 1) / 2).toFixed(1)} = no specificity)\n`);
    return;
  }
  const stats = sp.collectDomainRouting(model, corpus, { ...common, split: 'train', maxTokens: statsTokens ?? common.maxTokens });
  const file = { ...sp.selectExperts(stats, o.domain, maskable, { score, fraction, threshold, minShare }), data: dataName };
  const before = sp.evaluateDomains(model, corpus, { ...common, split: 'val' });
  const after = sp.evaluateDomains(model, corpus, { ...common, split: 'val', mask: sp.maskOf(file) });
  const out = resolve(o.out ?? 'mask.json');
  sp.writeMaskFile(out, file);
  const total = [...maskable.values()].reduce((a, l) => a + l.numExperts, 0);
  const rise = (i: number) => after[i]!.perplexity / before[i]!.perplexity - 1;
  const target = before.findIndex((b) => b.domain === o.domain);
  const others = before.map((_, i) => i).filter((i) => i !== target);
  const meanOthers = others.reduce((a, i) => a + rise(i), 0) / Math.max(1, others.length);
  if (o.json) {
    const domains = before.map((b, i) => ({ ...b, maskedLoss: after[i]!.loss, maskedPerplexity: after[i]!.perplexity }));
    process.stdout.write(`${JSON.stringify({ mask: out, ...file, maskedExperts: sp.maskedCount(file), totalExperts: total, domains }, null, 2)}\n`);
    return;
  }
  const how = threshold !== undefined ? `threshold ${threshold}` : `fraction ${file.fraction}`;
  process.stdout.write(
    `masked ${sp.maskedCount(file)} of ${total} experts in ${Object.keys(file.layers).length} layers for "${o.domain}" (${score}, ${how}; statistics on the train split, at most ${statsTokens ?? common.maxTokens} tokens per domain)\n`,
  );
  for (const [layer, ids] of Object.entries(file.layers)) process.stdout.write(`  ${layer}: ${ids.length ? ids.join(',') : '(none)'}\n`);
  const pct = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)}%`;
  process.stdout.write('\nvalidation perplexity per domain (* = masked domain):\n');
  process.stdout.write(
    `${formatTable(
      ['domain', 'tokens', 'ppl before', 'ppl masked', 'change'],
      before.map((b, i) => [`${i === target ? '* ' : ''}${b.domain}`, b.tokens, b.perplexity.toFixed(3), after[i]!.perplexity.toFixed(3), pct(rise(i))]),
    )}\n`,
  );
  process.stdout.write(`\n"${o.domain}": ${pct(rise(target))}; other domains: mean ${pct(meanOthers)}\nmask: ${out}\n`);
}

async function cmdGenerate(args: string[], o: Opts): Promise<void> {
  if (!args[0]) throw new MoelabError('usage: moelab generate <checkpoint-dir> [--prompt TEXT] [--tokens N] [--temperature X] [--top-k K] [--no-cache]');
  await backend(o, true);
  const { model } = loadCheckpoint(args[0], createDefaultRegistry());
  const tok = new ByteTokenizer();
  const prompt = o.prompt ?? 'The ';
  const ids = generateTokens(model, tok.encode(prompt), {
    maxNewTokens: num(o.tokens, 'tokens') ?? 200,
    temperature: num(o.temperature, 'temperature', false) ?? 0.8,
    topK: num(o['top-k'], 'top-k') ?? 0,
    seed: num(o.seed, 'seed') ?? 0,
    cache: !o['no-cache'],
    onFallback: (reason) => process.stderr.write(`moelab generate: ${reason}\n`),
  });
  process.stdout.write(`${prompt}${tok.decode(ids)}\n`);
}

function cmdList(args: string[], o: Opts): void {
  const registry = createDefaultRegistry();
  const [kind, pattern] = args;
  const kinds = [...registry.kinds(), 'preset'].sort();
  if (kind && !kinds.includes(kind)) throw new MoelabError(`unknown kind "${kind}". Kinds: ${kinds.join(', ')}`);
  const entries = kind === 'preset' ? [] : registry.list(kind, pattern);
  const presets = !kind || kind === 'preset' ? registry.presets(pattern) : [];
  if (o.json) {
    const described = [...entries.map((e) => registry.describe(e.kind, e.name)), ...presets.map((p) => ({ kind: 'preset', ...p }))];
    process.stdout.write(`${JSON.stringify(described, null, 2)}\n`);
    return;
  }
  const rows = [
    ...entries.map((e) => ({ kind: e.kind as string, name: e.name, description: e.description })),
    ...presets.map((p) => ({ kind: 'preset', ...p })),
  ];
  rows.sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
  let current = '';
  const width = Math.max(22, ...rows.map((e) => e.name.length));
  for (const e of rows) {
    if (e.kind !== current) {
      current = e.kind;
      process.stdout.write(`\n${current}:\n`);
    }
    process.stdout.write(`  ${e.name.padEnd(width)} ${e.description}\n`);
  }
}

async function cmdInspect(args: string[], o: Opts): Promise<void> {
  if (!args[0]) throw new MoelabError('usage: moelab inspect <checkpoint-dir> [--text TEXT] [--json]');
  await backend(o, true);
  const { model, config } = loadCheckpoint(args[0], createDefaultRegistry());
  const summary = modelSummary(model);
  const tok = new ByteTokenizer();
  let ids: Int32Array;
  if (o.text) ids = tok.encode(o.text);
  else ids = new CorpusTokens(loadCorpus(o.data ?? 'brown')).tokens('val').slice(0, model.contextLength);
  ids = ids.slice(0, model.contextLength);
  if (ids.length === 0) throw new MoelabError('--text is empty');
  const ctx = forwardContext(new Rng(0), false, { assignments: new Map() });
  tf.tidy(() => {
    model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), ctx);
  });
  const layers = [...mergeRouting(ctx.routing).values()].map((s) => ({
    ...routingMetrics(s),
    experts: s.numExperts,
    // kept for older readers: raw kept load and the mean per-token entropy in nats
    entropy: s.entropy,
    load: s.load,
  }));
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ spec: config.spec, step: config.step, ...summary, tokens: ids.length, layers }, null, 2)}\n`);
    return;
  }
  process.stdout.write(
    `checkpoint: ${args[0]} (step ${config.step})\nspec: ${JSON.stringify(config.spec)}\nparameters: ${summary.parameters.toLocaleString()}  active per token: ${summary.activeParameters.toLocaleString()}  non-embedding: ${summary.nonEmbeddingParameters.toLocaleString()}\nforward FLOPs per token (n_ctx ${model.contextLength}, attention included): ${summary.forwardFlopsPerToken.toLocaleString()}\n`,
  );
  if (layers.length === 0) {
    process.stdout.write('no MoE layers (dense model)\n');
    return;
  }
  const f3 = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(3));
  const pct = (x: number | undefined) => (x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);
  process.stdout.write(`\nrouting on ${ids.length} tokens (entropies normalised by log E; load = intended assignments):\n`);
  process.stdout.write(
    `${formatTable(
      [
        'layer',
        'experts',
        'load per expert (%)',
        'entropy',
        'marg. entropy',
        'CV',
        'MaxVio',
        'drop',
        'token drop',
        'experts/token [min-max]',
        'z-loss',
        'saturation',
      ],
      layers.map((l) => [
        l.layer,
        l.experts,
        l.loadFraction.map((x) => (100 * x).toFixed(0)).join(' '),
        f3(l.routingEntropy),
        f3(l.marginalEntropy),
        l.cv.toFixed(3),
        l.maxVio.toFixed(3),
        pct(l.dropRate),
        pct(l.tokenDropRate),
        `${l.expertsPerToken.toFixed(2)} [${l.expertsPerTokenMin ?? '-'}-${l.expertsPerTokenMax ?? '-'}]`,
        f3(l.zLoss),
        pct(l.saturation),
      ]),
    )}\n`,
  );
  const first = [...(ctx.assignments?.entries() ?? [])][0];
  if (first) {
    const [layer, calls] = first;
    const call = calls[0]!;
    const per: number[][] = Array.from({ length: call.tokens }, () => []);
    for (let n = 0; n < call.tokenIndex.length; n++) per[call.tokenIndex[n]!]!.push(call.expertIndex[n]!);
    const shown = Math.min(40, ids.length);
    process.stdout.write(`\nexperts chosen per token in ${layer} (first ${shown} tokens):\n`);
    for (let t = 0; t < shown; t++) process.stdout.write(`  ${JSON.stringify(tok.decode([ids[t]!])).padEnd(6)} -> ${per[t]!.join(',')}\n`);
  }
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  const o = values as Opts;
  const [cmd, ...args] = positionals;
  if (o.help || !cmd) {
    process.stdout.write(HELP);
    return cmd || o.help ? 0 : 1;
  }
  switch (cmd) {
    case 'train':
      await cmdTrain(args, o);
      return 0;
    case 'eval':
      await cmdEval(args, o);
      return 0;
    case 'mask':
      await cmdMask(args, o);
      return 0;
    case 'generate':
      await cmdGenerate(args, o);
      return 0;
    case 'list':
      cmdList(args, o);
      return 0;
    case 'inspect':
      await cmdInspect(args, o);
      return 0;
    case 'verify':
      await backend(o, true);
      return verifyFiles(args, createDefaultRegistry(), o.json ?? false);
    case 'sweep': {
      if (!o.router) throw new MoelabError('usage: moelab sweep --router a,b,c [--preset moe-tiny] [--steps N] (see `moelab list router`)');
      await backend(o);
      const { sweepRouters } = await import('./sweep.js');
      const routers = o.router
        .split(',')
        .map((r) => r.trim())
        .filter(Boolean);
      sweepRouters({
        routers,
        preset: o.preset ?? 'moe-tiny',
        data: o.data ?? 'brown',
        outDir: resolve(o.out ?? join('runs', `sweep-${routers.join('-')}`)),
        train: trainOverrides(o),
        quiet: o.quiet,
      });
      return 0;
    }
    case 'bench': {
      // Every available backend under --backend auto (the default), else the listed ones (a,b).
      const { runBenchBackends } = await import('./bench.js');
      await runBenchBackends({ backends: o.backend, only: o.only?.split(','), quick: o.quick, json: o.json ? (args[0] ?? 'bench.json') : undefined });
      return 0;
    }
    case 'compare':
    case 'main': {
      await backend(o);
      const presets = cmd === 'main' ? ['dense-tiny', 'moe-tiny'] : args;
      if (presets.length === 0) throw new MoelabError('usage: moelab compare <preset> <preset> … (see `moelab list preset`)');
      await compareRuns({
        presets,
        data: o.data ?? 'brown',
        outDir: resolve(o.out ?? join('runs', cmd === 'main' ? 'main' : `compare-${presets.join('-vs-')}`)),
        timeBudgetSec: num(o['time-budget'], 'time-budget', false) ?? (cmd === 'main' ? 150 : undefined),
        train: trainOverrides(o),
        quiet: o.quiet,
      });
      return 0;
    }
    default:
      throw new MoelabError(`unknown command "${cmd}". Run \`moelab --help\` for the list.`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const err = e as Error & { code?: string };
    if (process.env.MOELAB_DEBUG) console.error(err);
    const known = err instanceof MoelabError || err.code?.startsWith('ERR_PARSE_ARGS');
    process.stderr.write(`moelab: ${known ? '' : 'error: '}${err.message}\n`);
    process.exitCode = 2;
  },
);
