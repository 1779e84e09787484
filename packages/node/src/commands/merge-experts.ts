/**
 * `moelab merge-experts`: M-SMoE / MC-SMoE expert merging (router-logit similarity grouping, hidden-unit
 * alignment, frequency-weighted averaging, binding), written as an ordinary checkpoint.
 */
import { Command, Option } from '@commander-js/extra-typings';
import { mergeExperts, RoutingObserver } from '@moelab/compress';
import { MoelabError } from '@moelab/core';
import {
  beforeAfterOption,
  calibOption,
  calibrateSets,
  calibSets,
  calibTokensOption,
  openForCompression,
  perplexityJson,
  perplexityLine,
  saveCompressed,
} from './compress-shared.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, checkpointDataOption, integer, jsonOption, seqOption, useBackend } from './options.js';

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
      .addOption(calibOption())
      .addOption(calibTokensOption())
      .addOption(new Option('--out <dir>', 'where to write the merged checkpoint'))
      .addOption(checkpointDataOption())
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(beforeAfterOption())
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    if (o.groups === undefined || !o.out)
      throw new MoelabError('usage: moelab merge-experts <checkpoint> --groups G --out DIR [--method mc-smoe|average] [--calib SET]');
    if (!(METHODS as readonly string[]).includes(o.method)) throw new MoelabError(`unknown method "${o.method}"; one of ${METHODS.join(', ')}`, '--method');
    await useBackend(o.backend, o.json);
    const input = openForCompression(checkpoint, o);
    const { registry, model, config } = input;
    const sets = calibSets(o.calib ?? input.dataName);
    const calibName = sets.map((c) => c.name).join(',');
    // Several texts add up in one observer (the groups follow the summed router-logit statistics).
    const [observer] = calibrateSets(input, sets, { calibTokens: o.calibTokens, batch: o.batch, merged: true, observer: () => new RoutingObserver() });
    const report = mergeExperts(registry, observer!, { spec: config.spec, model }, { groups: o.groups, align: o.method === 'mc-smoe' });
    const after = input.evaluate(model);
    const out = saveCompressed(o.out, model, config.spec, input);
    const groups = Object.fromEntries(report.groups);
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ checkpoint: out, method: o.method, groups, calib: calibName, ...perplexityJson(input, after) }, null, 2)}\n`);
      return 0;
    }
    process.stdout.write(`merged every MoE layer into ${o.groups} experts (${o.method}, calibration "${calibName}")\n`);
    for (const [layer, gs] of report.groups) process.stdout.write(`  ${layer}: ${gs.map((g) => `{${g.join(',')}}`).join(' ')}\n`);
    process.stdout.write(`${perplexityLine(input.dataName, input.before, after)}checkpoint: ${out}\n`);
    return 0;
  },
});
