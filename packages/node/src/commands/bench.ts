/** `moelab bench`: the reference workloads (dense and MoE layers, attention, training steps) on each backend. */
import { Command, Option } from '@commander-js/extra-typings';
import { runBenchBackends } from '../bench.js';
import { defineCommand } from './command.js';
import { list } from './options.js';

export const bench = defineCommand({
  define: () =>
    new Command('bench')
      .summary('the PyTorch anchor workloads on each backend (--json out.json, --only a,b, --quick, --backend a,b)')
      .description(
        'Time the reference workloads (the same rows as the PyTorch anchor benchmark) on every available backend ' +
          '(--backend auto) or on the listed ones, and print a table per backend.',
      )
      .addOption(
        new Option('--backend <names>', 'auto (every available backend) or a comma-separated list: tensorflow, moelab-cpu, moelab-wasm, wasm, cpu').default(
          'auto',
        ),
      )
      .addOption(new Option('--only <rows>', 'only the rows whose names contain one of these (comma-separated)').argParser(list))
      .addOption(new Option('--quick', 'fewer repetitions (a smoke run, not a measurement)'))
      .addOption(new Option('--json [file]', 'also write the results as JSON (backends after the first get <file>.<backend>.json)').preset('bench.json')),
  async run(_args, o) {
    await runBenchBackends({ backends: o.backend, only: o.only, quick: o.quick, json: o.json });
    return 0;
  },
});
