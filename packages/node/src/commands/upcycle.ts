/**
 * `moelab upcycle`: build an MoE checkpoint from dense checkpoints with one upcycler (docs/upcycling.md),
 * print its report and provenance table, and write an ordinary checkpoint (config.json,
 * model.safetensors, optimizer.safetensors when the Adam state is carried, provenance.json) atomically.
 *
 *   moelab upcycle --method btx --seed runs/seed/checkpoint --experts runs/a/checkpoint,runs/b/checkpoint --out runs/btx/checkpoint
 *   moelab upcycle --method sparse-upcycle --seed runs/seed/checkpoint --experts 8 --out runs/su/checkpoint
 *   moelab upcycle --method moefication --partition co-activation --seed runs/seed/checkpoint --calibration corpus.txt --out runs/mf/checkpoint
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import {
  ByteTokenizer,
  CHECKPOINT_FORMAT,
  checkpointConfigText,
  makeCheckpointConfig,
  MoelabError,
  type NodeSpec,
  readSafetensors,
  writeSafetensors,
} from '@moelab/core';
import { formatProvenance, formatReport, provenanceRows, type UpcycleInput, type UpcycleSource, upcycle } from '@moelab/upcycle';
import { readCheckpointConfig } from '../checkpoint.js';
import { loadCorpus } from '../corpus.js';
import { writeDirAtomic } from '../fsutil.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { integer, jsonOption, list } from './options.js';

/** A readable name for a checkpoint directory: `runs/kjv/checkpoint` -> `kjv`. */
export function sourceName(dir: string): string {
  const b = basename(dir.replace(/\/+$/, ''));
  return b === 'checkpoint' ? basename(dirname(dir.replace(/\/+$/, ''))) : b;
}

/** A checkpoint directory as an upcycling source (weights, and the Adam state when saved). */
export function readSource(dir: string, flag: string): UpcycleSource {
  if (!existsSync(dir)) throw new MoelabError(`checkpoint directory not found`, `${flag} ${dir}`);
  const config = readCheckpointConfig(dir);
  const wpath = join(dir, 'model.safetensors');
  if (!existsSync(wpath)) throw new MoelabError('model.safetensors is missing', dir);
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [n, t] of readSafetensors(new Uint8Array(readFileSync(wpath)), wpath).tensors) {
    if (!(t.data instanceof Float32Array)) throw new MoelabError(`tensor "${n}" is not float32`, wpath);
    weights.set(n, { shape: t.shape.slice(), data: t.data });
  }
  const opath = join(dir, 'optimizer.safetensors');
  const optimizer = existsSync(opath) ? readSafetensors(new Uint8Array(readFileSync(opath)), opath).tensors : undefined;
  return { name: sourceName(dir), spec: config.spec, weights, optimizer, step: config.step };
}

/** Up to `count` windows of `length` tokens, spread evenly over the text of a corpus (a domain's samples). */
export function sampleWindows(source: string, length: number, count: number): Int32Array[] {
  const corpus = loadCorpus(source);
  const ids = new ByteTokenizer().encode(
    corpus.docs
      .filter((d) => d.split === 'train')
      .map((d) => d.text)
      .join('\n'),
  );
  if (ids.length === 0) throw new MoelabError('no text to sample', source);
  const n = Math.min(count, Math.max(1, Math.floor(ids.length / length)));
  const stride = Math.max(1, Math.floor((ids.length - length) / Math.max(1, n - 1)));
  return Array.from({ length: n }, (_, i) => {
    const start = Math.min(i * stride, Math.max(0, ids.length - length));
    return Int32Array.from(ids.subarray(start, start + length));
  });
}

function parseConfig(text: string | undefined): Record<string, unknown> {
  if (!text) return {};
  const raw = existsSync(text) ? readFileSync(text, 'utf8') : text;
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, `--config ${text}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new MoelabError('must be a JSON object of the upcycler’s options', `--config ${text}`);
  return v as Record<string, unknown>;
}

export const upcycleCommand = defineCommand({
  define: () =>
    new Command('upcycle')
      .summary('build an MoE checkpoint from dense checkpoints (sparse-upcycle, btx, bam, nexus, …); prints the provenance')
      .description(
        'Build an MoE checkpoint from dense checkpoints with one upcycler (moelab list upcycler), without training; ' +
          'prints the report (parameters, FLOPs) and the provenance table (which source tensors every weight came from) ' +
          'and writes an ordinary checkpoint to --out (with provenance.json).',
      )
      .addOption(
        new Option('--method <name>', 'the upcycler: sparse-upcycle, btx, bam, bam-kvshare, nexus, nexus-linear, nexus-extend, … (moelab list upcycler)'),
      )
      .addOption(new Option('--seed <dir>', 'the dense seed checkpoint'))
      .addOption(new Option('--experts <list>', 'dense checkpoints branched from the seed, comma-separated; for sparse-upcycle: the number of copies'))
      .addOption(new Option('--base <dir>', 'nexus-extend: the trained MoE checkpoint to extend'))
      .addOption(new Option('--config <json>', 'the upcycler\'s options as JSON (or a JSON file), e.g. \'{"layers": "all"}\''))
      .addOption(new Option('--domains <list>', 'nexus: one text source per expert (file, folder, brown, sotu) for the domain embeddings'))
      .addOption(new Option('--domain-embeddings <file>', 'nexus: a JSON array with one embedding (array of numbers) per expert'))
      .addOption(
        new Option(
          '--partition <name>',
          'split methods: how neurons are grouped (contiguous, random, balanced-kmeans, co-activation, importance, sharing-inner, sharing-inter); same as --config \'{"partition": …}\'',
        ),
      )
      .addOption(new Option('--calibration <source>', 'split methods: text the seed is run on to collect activation statistics'))
      .addOption(new Option('--samples <n>', 'windows per domain / calibration windows').default(64).argParser(integer('--samples')))
      .addOption(new Option('--rng-seed <n>', 'seed of the router initialisation and every random choice').default(0).argParser(integer('--rng-seed')))
      .addOption(new Option('--resume-optimizer', "carry the dense checkpoint's Adam state over (sparse-upcycle)"))
      .addOption(new Option('--provenance <mode>', 'provenance table: grouped (layers folded), all (one row per tensor) or none').default('grouped'))
      .addOption(new Option('--out <dir>', 'where to write the upcycled checkpoint'))
      .addOption(jsonOption()),
  run(_args, o) {
    if (!o.method || !o.out)
      throw new MoelabError(
        'usage: moelab upcycle --method NAME --seed DIR [--experts DIR,DIR,… | --experts N] [--base DIR] [--config JSON] --out DIR (see moelab list upcycler)',
      );
    if (!['grouped', 'all', 'none'].includes(o.provenance)) throw new MoelabError(`--provenance must be grouped, all or none, got "${o.provenance}"`);
    const registry = createDefaultRegistry();
    const config = parseConfig(o.config);
    if (o.partition !== undefined) config.partition = o.partition;
    const input: UpcycleInput = {};
    if (o.seed) input.seed = readSource(o.seed, '--seed');
    if (o.base) input.base = readSource(o.base, '--base');
    if (o.experts !== undefined) {
      if (/^\d+$/.test(o.experts.trim())) {
        if (!o.method.startsWith('sparse-upcycle'))
          throw new MoelabError(
            `a number of experts is for sparse-upcycle (copies of the seed); ${o.method} takes checkpoint directories`,
            `--experts ${o.experts}`,
          );
        config.experts = Number(o.experts);
      } else input.experts = list(o.experts).map((dir, i) => readSource(dir, `--experts[${i}]`));
    }
    const context = (input.seed ?? input.base)?.spec as { contextLength?: number } | undefined;
    const windowLength = context?.contextLength ?? 64;
    if (o.domainEmbeddings) {
      const v = JSON.parse(readFileSync(o.domainEmbeddings, 'utf8')) as unknown;
      if (!Array.isArray(v) || !v.every((e) => Array.isArray(e) && e.every((x) => typeof x === 'number')))
        throw new MoelabError('must be a JSON array of embeddings (arrays of numbers), one per expert', `--domain-embeddings ${o.domainEmbeddings}`);
      input.domainEmbeddings = v.map((e) => Float32Array.from(e as number[]));
    }
    if (o.domains) input.domainSamples = list(o.domains).map((d) => sampleWindows(d, windowLength, o.samples));
    if (o.calibration) input.calibration = sampleWindows(o.calibration, windowLength, o.samples);
    const method: NodeSpec = Object.keys(config).length ? { type: o.method, ...config } : o.method;
    const result = upcycle(registry, method, input, { seed: o.rngSeed, resumeOptimizerState: o.resumeOptimizer ? true : undefined });

    const checkpoint = makeCheckpointConfig({ spec: result.spec, step: result.step, seed: o.rngSeed });
    const weights = writeSafetensors(result.weights, { format: CHECKPOINT_FORMAT, step: String(result.step) });
    const optimizer = result.optimizer ? writeSafetensors(result.optimizer, { step: String(result.step) }) : undefined;
    const rows = provenanceRows(result);
    writeDirAtomic(o.out, (tmp) => {
      writeFileSync(join(tmp, 'model.safetensors'), weights);
      if (optimizer) writeFileSync(join(tmp, 'optimizer.safetensors'), optimizer);
      writeFileSync(join(tmp, 'provenance.json'), `${JSON.stringify({ method: result.report.method, report: result.report, tensors: rows }, null, 1)}\n`);
      writeFileSync(join(tmp, 'config.json'), checkpointConfigText(checkpoint));
    });
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ out: o.out, report: result.report, provenance: rows })}\n`);
      return 0;
    }
    process.stdout.write(`${formatReport(result)}\n`);
    if (o.provenance !== 'none') process.stdout.write(`\n${formatProvenance(result, { group: o.provenance === 'grouped' })}\n`);
    process.stdout.write(`\nwrote ${o.out} (config.json, model.safetensors${optimizer ? ', optimizer.safetensors' : ''}, provenance.json)\n`);
    return 0;
  },
});
