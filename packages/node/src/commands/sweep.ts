/** `moelab sweep`: train one preset once per router on the same data and budget; compare perplexity, MaxVio, drops. */
import { join, resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { MoelabError } from '@moelab/core';
import { sweepRouters } from '../sweep.js';
import { defineCommand } from './command.js';
import {
  backendOption,
  dataOption,
  list,
  quietOption,
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

export const sweep = defineCommand({
  define: () =>
    new Command('sweep')
      .summary('train --preset (default moe-tiny) once per router, compare ppl, MaxVio, drops')
      .description(
        "Train --preset once per router in --router (each run replaces the preset's router, same data and budget) " +
          'and print one table: validation loss and perplexity, MaxVio, load CV, drop rate, tokens/s.',
      )
      .addOption(new Option('--router <names>', 'comma-separated router names (see `moelab list router`)').argParser(list))
      .addOption(new Option('--preset <name>', 'the model to sweep').default('moe-tiny'))
      .addOption(dataOption())
      .addOption(new Option('--out <dir>', 'run directory (default: runs/sweep-<a>-<b>…)'))
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
      .addOption(quietOption()),
  async run(_args, o) {
    if (!o.router?.length) throw new MoelabError('usage: moelab sweep --router a,b,c [--preset moe-tiny] [--steps N] (see `moelab list router`)');
    await useBackend(o.backend);
    sweepRouters({
      routers: o.router,
      preset: o.preset,
      data: o.data,
      outDir: resolve(o.out ?? join('runs', `sweep-${o.router.join('-')}`)),
      train: trainOverrides(o),
      quiet: o.quiet,
    });
    return 0;
  },
});
