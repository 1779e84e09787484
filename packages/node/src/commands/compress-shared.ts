/**
 * What the checkpoint-rewriting compression commands (`moelab prune`, `moelab merge-experts`) share:
 * the calibration flags, opening the checkpoint with its evaluation data, the before / after
 * perplexity line and writing the result.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { Option } from '@commander-js/extra-typings';
import type { RoutingObserver } from '@moelab/compress';
import { MoelabError, type NodeSpec } from '@moelab/core';
import { calibrate, type TextSet, textSet } from '../calibration.js';
import { type CheckpointConfig, loadCheckpoint, type Model, saveCheckpoint } from '../checkpoint.js';
import { CorpusTokens, loadCorpus } from '../corpus.js';
import { createDefaultRegistry } from '../registry.js';
import { evaluateWithMask } from '../specialise.js';
import { evalBatchesOption, integer } from './options.js';

export const calibOption = () =>
  new Option('--calib <sets>', 'calibration text: brown, sotu, a path, or corpus:domain; several, comma-separated, calibrate on each domain (default: --data)');
export const calibTokensOption = () =>
  new Option('--calib-tokens <n>', 'calibration tokens per text (train split)').default(16384).argParser(integer('--calib-tokens'));
export const beforeAfterOption = () => evalBatchesOption('validation batches for the before/after perplexity (0 = skip)').default(8);

/** `--calib a,b`: the text sets (a name that is an existing path is never split). */
export function calibSets(spec: string, flag = '--calib'): TextSet[] {
  if (existsSync(spec)) return [textSet(spec, flag)];
  const names = spec.split(',').map((s) => s.trim());
  if (names.some((n) => n === '')) throw new MoelabError(`"${spec}" has an empty calibration text; separate the texts with single commas`, flag);
  return names.map((n) => textSet(n, flag));
}

export interface CompressionInput {
  registry: ReturnType<typeof createDefaultRegistry>;
  model: Model;
  config: CheckpointConfig;
  dataName: string;
  seqLen: number;
  /** The validation perplexity before any change (absent with --eval-batches 0). */
  before?: number;
  /** The same evaluation on another model. */
  evaluate(model: Model): number | undefined;
}

/** Load the checkpoint and measure its validation perplexity (the "before" of the summary). */
export function openForCompression(checkpoint: string, o: { data?: string; seq?: number; batch: number; evalBatches: number }): CompressionInput {
  const registry = createDefaultRegistry();
  const { model, config } = loadCheckpoint(checkpoint, registry);
  const dataName = o.data ?? config.train?.data ?? 'brown';
  const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
  const evalOpts = { seed: config.seed ?? 0, seqLen, batchSize: o.batch, batches: o.evalBatches };
  const data = o.evalBatches > 0 ? new CorpusTokens(loadCorpus(dataName)) : undefined;
  const evaluate = (m: Model) => (data ? evaluateWithMask(m, data, evalOpts).perplexity : undefined);
  return { registry, model, config, dataName, seqLen, before: evaluate(model), evaluate };
}

/** One calibration observer per text set (tagged with its name), or one over all of them with `merged`. */
export function calibrateSets(
  input: CompressionInput,
  sets: TextSet[],
  o: { calibTokens: number; batch: number; observer: () => RoutingObserver; merged?: boolean },
): RoutingObserver[] {
  const shared = o.merged ? o.observer() : undefined;
  return sets.map((set) =>
    calibrate(input.model, set, {
      seqLen: input.seqLen,
      maxTokens: o.calibTokens,
      batchSize: o.batch,
      flag: '--calib',
      observer: shared ?? o.observer(),
    }),
  );
}

/** `validation perplexity on brown: 6.622 -> 6.947 (+4.91%)`, or nothing without both numbers. */
export function perplexityLine(dataName: string, before: number | undefined, after: number | undefined): string {
  if (before === undefined || after === undefined) return '';
  return `validation perplexity on ${dataName}: ${before.toFixed(3)} -> ${after.toFixed(3)} (${(100 * (after / before - 1)).toFixed(2)}%)\n`;
}

/** The before / after pair of a JSON summary, when measured. */
export function perplexityJson(input: CompressionInput, after: number | undefined): { perplexity?: { before: number; after: number }; data?: string } {
  return input.before !== undefined && after !== undefined ? { perplexity: { before: input.before, after }, data: input.dataName } : {};
}

/** Write the compressed model as an ordinary checkpoint (step, seed and training record kept); returns its absolute path. */
export function saveCompressed(out: string, model: Model, spec: NodeSpec, input: CompressionInput): string {
  const path = resolve(out);
  saveCheckpoint(path, model, { spec, step: input.config.step, seed: input.config.seed ?? 0, train: input.config.train });
  return path;
}
