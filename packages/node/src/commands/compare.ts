/** `moelab compare` and `moelab main`: train presets on the same data and token budget, print one table. */
import { join, resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { compareRuns } from '../compare.js';
import { defineCommand } from './command.js';
import {
  backendOption,
  dataOption,
  number,
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

export const compare = defineCommand({
  define: () =>
    new Command('compare')
      .summary('train presets on the same data and budget, print a table')
      .description(
        'Train each preset on the same data with the same training flags and print one table: parameters, ' +
          'active parameters, MACs per token, validation loss and perplexity, tokens/s (also written to <out>/results.md and <out>/results.json).',
      )
      .argument('<preset...>', 'presets to compare (see `moelab list preset`)')
      .addOption(dataOption())
      .addOption(new Option('--out <dir>', 'run directory (default: runs/compare-<a>-vs-<b>…)'))
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
      .addOption(quietOption()),
  async run([presets], o) {
    await useBackend(o.backend);
    await compareRuns({
      presets,
      data: o.data,
      outDir: resolve(o.out ?? join('runs', `compare-${presets.join('-vs-')}`)),
      timeBudgetSec: o.timeBudget,
      train: trainOverrides(o),
      quiet: o.quiet,
    });
    return 0;
  },
});

/** The presets `moelab main` (what `pnpm start` runs) compares. */
export const MAIN_PRESETS = ['dense-tiny', 'moe-tiny'];

export const main = defineCommand({
  define: () =>
    new Command('main')
      .summary('the demo: compare dense-tiny and moe-tiny (what `pnpm start` runs)')
      .description(`The demo (what \`pnpm start\` runs): \`moelab compare ${MAIN_PRESETS.join(' ')}\` with a time budget per preset.`)
      .addOption(dataOption())
      .addOption(new Option('--out <dir>', 'run directory').default('runs/main'))
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
      .addOption(new Option('--time-budget <seconds>', 'stop each preset after this long').default(150).argParser(number('--time-budget')))
      .addOption(quietOption()),
  async run(_args, o) {
    await useBackend(o.backend);
    await compareRuns({
      presets: MAIN_PRESETS,
      data: o.data,
      outDir: resolve(o.out),
      timeBudgetSec: o.timeBudget,
      train: trainOverrides(o),
      quiet: o.quiet,
    });
    return 0;
  },
});
