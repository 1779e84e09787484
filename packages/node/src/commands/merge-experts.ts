/**
 * `moelab merge-experts`: M-SMoE / MC-SMoE expert merging (router-logit similarity grouping, hidden-unit
 * alignment, frequency-weighted averaging, binding), written as an ordinary checkpoint.
 */
import { resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { mergeExperts } from '@moelab/compress';
import { MoelabError } from '@moelab/core';
import { calibrate, textSet } from '../calibration.js';
import { loadCheckpoint, saveCheckpoint } from '../checkpoint.js';
import { CorpusTokens, loadCorpus } from '../corpus.js';
import { createDefaultRegistry } from '../registry.js';
import { evaluateWithMask } from '../specialise.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, checkpointDataOption, evalBatchesOption, integer, jsonOption, seqOption, useBackend } from './options.js';

const METHODS = ['mc-smoe', 'average'] as const;

export const mergeExpertsCommand = defineCommand({
  define: () =>
    new Command('merge-experts')
      .summary('merge every MoE layer’s experts into --groups groups (MC-SMoE); writes a checkpoint')
      .description(
        'Group the experts of every MoE layer by router-logit similarity around the --groups most used ones, align each ' +
          "member's hidden units to its group's dominant expert, average with usage-frequency weights and bind every member " +
          'slot to the merged weights (docs/compression.md#expert-merging-mc-smoe). --method average skips the alignment. ' +
          'Prints the validation perplexity before and after and writes an ordinary checkpoint (--out).',
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(new Option('--method <name>', `mc-smoe (aligned) or average (no alignment)`).default('mc-smoe'))
      .addOption(new Option('--groups <n>', 'distinct experts left per MoE layer').argParser(integer('--groups')))
      .addOption(new Option('--calib <set>', 'calibration text: brown, sotu, a path, or corpus:domain (default: --data)'))
      .addOption(new Option('--calib-tokens <n>', 'calibration tokens (train split)').default(16384).argParser(integer('--calib-tokens')))
      .addOption(new Option('--out <dir>', 'where to write the merged checkpoint'))
      .addOption(checkpointDataOption())
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(evalBatchesOption('validation batches for the before/after perplexity (0 = skip)').default(8))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    if (o.groups === undefined || !o.out)
      throw new MoelabError('usage: moelab merge-experts <checkpoint> --groups G --out DIR [--method mc-smoe|average] [--calib SET]');
    if (!(METHODS as readonly string[]).includes(o.method)) throw new MoelabError(`unknown method "${o.method}"; one of ${METHODS.join(', ')}`, '--method');
    await useBackend(o.backend, o.json);
    const registry = createDefaultRegistry();
    const { model, config } = loadCheckpoint(checkpoint, registry);
    const dataName = o.data ?? config.train?.data ?? 'brown';
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    const evalOpts = { seed: config.seed ?? 0, seqLen, batchSize: o.batch, batches: o.evalBatches };
    const data = o.evalBatches > 0 ? new CorpusTokens(loadCorpus(dataName)) : undefined;
    const before = data ? evaluateWithMask(model, data, evalOpts) : undefined;
    const calib = textSet(o.calib ?? dataName, '--calib');
    const observer = calibrate(model, calib, { seqLen, maxTokens: o.calibTokens, batchSize: o.batch, flag: '--calib' });
    const report = mergeExperts(registry, observer, { spec: config.spec, model }, { groups: o.groups, align: o.method === 'mc-smoe' });
    const after = data ? evaluateWithMask(model, data, evalOpts) : undefined;
    const out = resolve(o.out);
    saveCheckpoint(out, model, { spec: config.spec, step: config.step, seed: config.seed ?? 0, train: config.train });
    const groups = Object.fromEntries(report.groups);
    if (o.json) {
      process.stdout.write(
        `${JSON.stringify({ checkpoint: out, method: o.method, groups, calib: calib.name, ...(before && after ? { perplexity: { before: before.perplexity, after: after.perplexity }, data: dataName } : {}) }, null, 2)}\n`,
      );
      return 0;
    }
    process.stdout.write(`merged every MoE layer into ${o.groups} experts (${o.method}, calibration "${calib.name}")\n`);
    for (const [layer, gs] of report.groups) process.stdout.write(`  ${layer}: ${gs.map((g) => `{${g.join(',')}}`).join(' ')}\n`);
    if (before && after)
      process.stdout.write(
        `validation perplexity on ${dataName}: ${before.perplexity.toFixed(3)} -> ${after.perplexity.toFixed(3)} (${(100 * (after.perplexity / before.perplexity - 1)).toFixed(2)}%)\n`,
      );
    process.stdout.write(`checkpoint: ${out}\n`);
    return 0;
  },
});
