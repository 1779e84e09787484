/**
 * Flags several commands share, each with its description and default, and the number parsers that
 * turn a bad value into a one-line error naming the flag (`--steps expects an integer, got "many"`).
 */
import { Option } from '@commander-js/extra-typings';
import { MoelabError, type TrainConfig } from '@moelab/core';
import { chooseBackend } from '../backends.js';

/** Parser for an integer flag. */
export function integer(flag: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isInteger(n)) throw new MoelabError(`${flag} expects an integer, got "${v}"`);
    return n;
  };
}

/** Parser for a finite number flag. */
export function number(flag: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw new MoelabError(`${flag} expects a number, got "${v}"`);
    return n;
  };
}

/** Parser for a comma-separated list (`a,b,c`; blanks dropped). */
export function list(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

export const backendOption = () =>
  new Option(
    '--backend <name>',
    'tfjs backend: auto (tensorflow > moelab-cpu > moelab-wasm > wasm > cpu) or a name (moelab-cpu, moelab-wasm, wasm, cpu, tensorflow)',
  ).default('auto');

const DATA = 'text: brown, sotu, or a path to a text file or a folder of text files (domain = file name)';
/** `--data` for commands that train (default brown). */
export const dataOption = () => new Option('--data <source>', DATA).default('brown');
/** `--data` for commands that read a checkpoint, which remembers the data it was trained on. */
export const checkpointDataOption = () => new Option('--data <source>', `${DATA} (default: the checkpoint's training data, else brown)`);

export const jsonOption = () => new Option('--json', 'machine-readable output (JSON on stdout)');
export const quietOption = () => new Option('--quiet', 'no progress line (the summary lines are still printed)');
export const seqOption = (what = 'sequence length in tokens') => new Option('--seq <n>', what).argParser(integer('--seq'));
export const batchOption = (what = 'sequences per batch') => new Option('--batch <n>', what).argParser(integer('--batch'));
export const evalBatchesOption = (what = 'validation batches per evaluation') => new Option('--eval-batches <n>', what).argParser(integer('--eval-batches'));
export const timeBudgetOption = () =>
  new Option('--time-budget <seconds>', 'stop training after this long (then evaluate and save)').argParser(number('--time-budget'));
export const seedOption = (what = 'random seed') => new Option('--seed <n>', what).argParser(integer('--seed'));

export const stepsOption = () => new Option('--steps <n>', 'optimizer steps').argParser(integer('--steps'));
export const lrOption = () => new Option('--lr <x>', 'peak learning rate').argParser(number('--lr'));
export const evalEveryOption = () =>
  new Option('--eval-every <n>', 'evaluate on the validation split every N steps (0 = only at the end)').argParser(integer('--eval-every'));
export const statsEveryOption = () =>
  new Option('--stats-every <n>', 'routing statistics in metrics.jsonl at step 1, every N-th and the last step (default 10; 1 = every step)').argParser(
    integer('--stats-every'),
  );
export const accumulateOption = () => new Option('--accumulate <n>', 'micro-batches accumulated per optimizer step').argParser(integer('--accumulate'));

/**
 * The training-config flags (train, compare, main, sweep); unset flags keep the preset's or spec's
 * value. A command adds them one by one (a generic "add all" helper costs the type checker minutes).
 */
export interface TrainFlags {
  steps?: number;
  batch?: number;
  seq?: number;
  lr?: number;
  seed?: number;
  evalEvery?: number;
  statsEvery?: number;
  evalBatches?: number;
  accumulate?: number;
}

/** The `TrainConfig` fields the flags set (unset flags are left out). */
export function trainOverrides(o: TrainFlags): Partial<TrainConfig> {
  const t: Partial<TrainConfig> = {
    steps: o.steps,
    batchSize: o.batch,
    seqLen: o.seq,
    lr: o.lr,
    seed: o.seed,
    evalEvery: o.evalEvery,
    statsEvery: o.statsEvery,
    evalBatches: o.evalBatches,
    accumulate: o.accumulate,
  };
  return Object.fromEntries(Object.entries(t).filter(([, v]) => v !== undefined));
}

/** Select the backend before any model is built; prints the choice on stderr unless `quiet`. */
export async function useBackend(request: string, quiet = false): Promise<void> {
  let choice: Awaited<ReturnType<typeof chooseBackend>>;
  try {
    choice = await chooseBackend(request);
  } catch (e) {
    throw new MoelabError((e as Error).message, '--backend');
  }
  if (!quiet) process.stderr.write(`backend: ${choice.name} — ${choice.reason}\n`);
}
