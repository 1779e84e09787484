/** `moelab train`: train a model from a spec file or a preset on a corpus; writes a checkpoint and metrics.jsonl. */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { MoelabError, type NodeSpec, type TrainConfig } from '@moelab/core';
import { fallbackReport } from '../backends.js';
import { readTokenizerFile } from '../checkpoint.js';
import { createDefaultRegistry } from '../registry.js';
import { trainRun } from '../run.js';
import { human } from '../table.js';
import { defineCommand } from './command.js';
import {
  backendOption,
  dataOption,
  integer,
  quietOption,
  timeBudgetOption,
  trainOverrides,
  useBackend,
  stepsOption,
  lrOption,
  evalEveryOption,
  statsEveryOption,
  evalBatchesOption,
  accumulateOption,
  batchOption,
  seqOption,
  seedOption,
} from './options.js';

export function readSpecFile(path: string): NodeSpec {
  if (!existsSync(path)) throw new MoelabError('no such file', path);
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, path);
  }
}

/** Whether a config.json is a Hugging Face model's (model_type, no moelab format): a common slip for --resume. */
function isHfConfig(path: string): boolean {
  try {
    const c = JSON.parse(readFileSync(path, 'utf8'));
    return typeof c === 'object' && c !== null && 'model_type' in c && !('format' in c);
  } catch {
    return false;
  }
}

/** The checkpoint directory a --resume argument names: a checkpoint, or a run directory holding one in checkpoint/. */
function checkpointDirOf(path: string): string {
  const config = join(path, 'config.json');
  if (existsSync(config)) {
    if (isHfConfig(config)) throw new MoelabError('a Hugging Face directory: import it first (moelab import DIR --out CHECKPOINT)', path);
    return resolve(path);
  }
  if (existsSync(join(path, 'checkpoint', 'config.json'))) return resolve(path, 'checkpoint');
  throw new MoelabError(existsSync(path) ? 'not a moelab checkpoint (no config.json, nor checkpoint/config.json)' : 'no such checkpoint directory', path);
}

export const train = defineCommand({
  define: () =>
    new Command('train')
      .summary('train a model (a spec file or --preset NAME) on --data')
      .description(
        'Train a model from a JSON spec file or a registered preset (`moelab list preset`) and write ' +
          '<out>/checkpoint, <out>/metrics.jsonl (one JSON line per step and evaluation).',
      )
      .argument('[spec]', 'model spec JSON file (or give --preset); with --resume: the checkpoint to continue (default: <out>/checkpoint)')
      .addOption(new Option('--preset <name>', 'a registered preset: its spec and suggested training config'))
      .addOption(dataOption())
      .addOption(new Option('--out <dir>', 'run directory (default: runs/<spec or preset name>)'))
      .addOption(backendOption())
      .addOption(stepsOption())
      .addOption(batchOption())
      .addOption(seqOption())
      .addOption(lrOption())
      .addOption(seedOption('random seed (initialisation and batch order)'))
      .addOption(evalEveryOption())
      .addOption(statsEveryOption())
      .addOption(evalBatchesOption())
      .addOption(accumulateOption())
      .addOption(timeBudgetOption())
      .addOption(
        new Option('--checkpoint-every <n>', 'also save the checkpoint every N steps (default: only at the end)').argParser(integer('--checkpoint-every')),
      )
      .addOption(
        new Option(
          '--resume',
          'continue a checkpoint (the one in --out, or the one given as the argument, e.g. from `moelab import`) with its spec, config, optimizer state, tokenizer and step; without optimizer state (an imported checkpoint) training continues from its weights with fresh optimizer state',
        ),
      )
      .addOption(new Option('--tokenizer <file>', 'a Hugging Face tokenizer.json to tokenize the corpus with (default: bytes); it travels with the checkpoint'))
      .addOption(quietOption()),
  async run([specFile], o) {
    const registry = createDefaultRegistry();
    let spec: NodeSpec;
    let preset: Partial<TrainConfig> = {};
    let name: string;
    let resumeFrom: string | undefined;
    if (o.resume) {
      if (!o.out) throw new MoelabError('--resume needs --out DIR (the run directory to write; it continues <out>/checkpoint unless a checkpoint is given)');
      if (o.tokenizer) throw new MoelabError("--resume continues with the checkpoint's own tokenizer; leave --tokenizer out", '--tokenizer');
      if (o.preset) throw new MoelabError('--resume continues a checkpoint; leave --preset out', '--preset');
      if (specFile) resumeFrom = checkpointDirOf(specFile);
      spec = {} as NodeSpec;
      name = o.out;
    } else if (o.preset) {
      const p = registry.preset(o.preset, '--preset');
      spec = p.spec;
      preset = p.train;
      name = o.preset;
    } else if (specFile) {
      spec = readSpecFile(specFile);
      name = specFile.replace(/^.*\//, '').replace(/\.json$/, '');
    } else throw new MoelabError('give a model spec file or --preset NAME (see `moelab list preset`)');
    await useBackend(o.backend);
    const outDir = resolve(o.out ?? join('runs', name));
    const r = trainRun({
      registry,
      spec,
      train: { ...preset, ...trainOverrides(o) },
      data: o.data,
      outDir,
      resume: o.resume,
      resumeFrom,
      timeBudgetSec: o.timeBudget,
      checkpointEvery: o.checkpointEvery,
      label: name,
      quiet: o.quiet,
      tokenizer: o.tokenizer ? readTokenizerFile(o.tokenizer) : undefined,
    });
    if (r.freshOptimizer)
      process.stderr.write(
        `note: ${resumeFrom ?? join(outDir, 'checkpoint')} has no optimizer.safetensors (e.g. from \`moelab import\`): continued from its weights with fresh optimizer state and a new schedule from step 0\n`,
      );
    const fellBack = await fallbackReport();
    if (fellBack) process.stderr.write(`${fellBack}\n`);
    process.stdout.write(
      `${name}: ${r.steps} steps, val loss ${r.finalEval.loss.toFixed(4)} (ppl ${r.finalEval.perplexity.toFixed(2)}), ${Math.round(r.tokensPerSec)} tok/s, ${human(r.summary.parameters)} params (${human(r.summary.activeParameters)} active)\ncheckpoint: ${join(outDir, 'checkpoint')}\nmetrics: ${join(outDir, 'metrics.jsonl')}\n`,
    );
    return 0;
  },
});
