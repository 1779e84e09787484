/**
 * `moelab finetune`: fine-tune a checkpoint with an adapter method on --data; writes the adapter (only its
 * tensors, keyed by the base's content hash) and metrics.jsonl. docs/finetune.md#the-command-line.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { MoelabError } from '@moelab/core';
import { finetuneMethods } from '@moelab/finetune';
import { finetuneRun } from '../finetune-run.js';
import { createDefaultRegistry } from '../registry.js';
import { human } from '../table.js';
import { defineCommand } from './command.js';
import {
  backendOption,
  batchOption,
  evalBatchesOption,
  evalEveryOption,
  integer,
  jsonOption,
  list,
  lrOption,
  number,
  quietOption,
  seedOption,
  seqOption,
  stepsOption,
  trainOverrides,
  useBackend,
} from './options.js';

/** `--options` as inline JSON or a JSON file. */
export function readOptions(value: string | undefined): Record<string, unknown> {
  if (value === undefined) return {};
  const text = value.trim().startsWith('{') ? value : existsSync(value) ? readFileSync(value, 'utf8') : undefined;
  if (text === undefined) throw new MoelabError('expected a JSON object or the path of a JSON file', '--options');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, '--options');
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new MoelabError('must be a JSON object of adapter options', '--options');
  return parsed as Record<string, unknown>;
}

export const finetune = defineCommand({
  define: () =>
    new Command('finetune')
      .summary('fine-tune a checkpoint with an adapter (--method lora, perft-r, ...) on --data; writes <out>/adapter')
      .description(
        'Attach the adapters of --method to the base checkpoint, freeze the base, train on --data and write ' +
          '<out>/adapter (adapter.json + adapter.safetensors: adapter tensors only, keyed by the base content hash) ' +
          `and <out>/metrics.jsonl. Methods: ${[...finetuneMethods.keys()].join(', ')} (full trains every weight and writes <out>/checkpoint).`,
      )
      .argument('<base>', 'base checkpoint directory (runs/<name>/checkpoint)')
      .addOption(new Option('--method <name>', 'fine-tuning method').default('lora'))
      .addOption(new Option('--data <source>', 'target text: brown, sotu, or a path').default('sotu'))
      .addOption(new Option('--domain <prefix>', 'keep only documents of this domain (e.g. 1946-2021 for modern SOTU)'))
      .addOption(new Option('--general <source>', 'also report validation bits/byte on this corpus before and after (forgetting), e.g. brown'))
      .addOption(new Option('--out <dir>', 'run directory (default: runs/finetune-<method>)'))
      .addOption(new Option('--options <json>', 'adapter options as JSON or a JSON file, e.g. \'{"rank":16,"experts":8}\''))
      .addOption(new Option('--rank <r>', 'adapter rank').argParser(integer('--rank')))
      .addOption(new Option('--alpha <a>', 'adapter scale numerator α (update scaled by α/r)').argParser(number('--alpha')))
      .addOption(new Option('--experts <m>', 'number of adapter experts (PERFT-D/-R, MoV, MoLoRA)').argParser(integer('--experts')))
      .addOption(new Option('--top-k <k>', "adapter experts per token (PERFT-R's K')").argParser(integer('--top-k')))
      .addOption(new Option('--targets <globs>', 'comma-separated globs over module paths, e.g. "*.attention.q_proj,*.attention.v_proj"').argParser(list))
      .addOption(stepsOption())
      .addOption(batchOption())
      .addOption(seqOption())
      .addOption(lrOption())
      .addOption(seedOption('seed of the adapter initialisation and the batch order'))
      .addOption(evalEveryOption())
      .addOption(evalBatchesOption())
      .addOption(jsonOption())
      .addOption(quietOption())
      .addOption(backendOption()),
  async run([base], o) {
    const flags = Object.fromEntries(
      Object.entries({ rank: o.rank, alpha: o.alpha, experts: o.experts, topK: o.topK, targets: o.targets }).filter(([, v]) => v !== undefined),
    );
    const options = { ...readOptions(o.options), ...flags };
    await useBackend(o.backend, o.json);
    const outDir = resolve(o.out ?? join('runs', `finetune-${o.method}`));
    const r = finetuneRun({
      registry: createDefaultRegistry(),
      base,
      method: o.method,
      options,
      data: o.data,
      domain: o.domain,
      general: o.general,
      train: { steps: 150, batchSize: 16, evalEvery: 0, evalBatches: 8, ...trainOverrides(o) },
      outDir,
      quiet: o.quiet || o.json,
    });
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ ...r, losses: undefined })}\n`);
      return 0;
    }
    const bpb = (m: { bitsPerToken: number }) => m.bitsPerToken.toFixed(3);
    const lines = [
      `${r.method}: ${r.steps} steps in ${r.wallSec.toFixed(0)} s, trainable ${human(r.counts.trainable)} of ${human(r.counts.base + r.counts.added)} parameters (${human(r.counts.frozen)} frozen)`,
      `${o.data}${o.domain ? ` ${o.domain}` : ''} val: ${bpb(r.target.before)} -> ${bpb(r.target.after)} bits/byte`,
      ...(r.general ? [`${o.general} val: ${bpb(r.general.before)} -> ${bpb(r.general.after)} bits/byte`] : []),
      `${r.saved.endsWith('adapter') ? 'adapter' : 'checkpoint'}: ${r.saved}`,
      `metrics: ${join(outDir, 'metrics.jsonl')}`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  },
});
