/** `moelab recipe <recipe.json>`: run (or resume) a declarative branch–train–mix pipeline and print its table. */
import { basename, dirname, extname, join, resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { MoelabError } from '@moelab/core';
import { describeUnit } from '../recipe/plan.js';
import { prepareRecipe, readRecipeFile, runRecipe } from '../recipe/runner.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { backendOption, integer, quietOption, useBackend } from './options.js';

export const recipe = defineCommand({
  define: () =>
    new Command('recipe')
      .summary('run a recipe: seed -> branches -> merges -> baselines -> table (resumable)')
      .description(
        'Run the phases of a recipe file (docs/recipes.md): dense training, per-domain branches, ' +
          'upcycler merges and matched baselines. Every run writes <out>/<run>/checkpoint and row.json; a finished run is ' +
          'skipped when the command is repeated, so an interrupted recipe resumes where it stopped. The table of held-out ' +
          'bits per byte per domain goes to stdout and to <out>/results.md and <out>/results.json.',
      )
      .argument('<recipe>', 'recipe file (JSON)')
      .addOption(new Option('--out <dir>', 'output directory (default: runs/<recipe file name>)'))
      .addOption(
        new Option('--workers <n>', 'runs trained at the same time, one process each (independent branches, merges, baselines)')
          .default(1)
          .argParser(integer('--workers')),
      )
      .addOption(new Option('--check', 'validate the recipe and its corpus and list the runs, without training'))
      .addOption(backendOption())
      .addOption(quietOption()),
  async run([file], o) {
    if (o.workers < 1) throw new MoelabError(`--workers must be at least 1, got ${o.workers}`);
    const value = readRecipeFile(file);
    const baseDir = dirname(resolve(file));
    const outDir = resolve(o.out ?? join('runs', basename(file, extname(file))));
    await useBackend(o.backend, o.quiet || o.check);
    if (o.check) {
      const p = prepareRecipe(value, baseDir, createDefaultRegistry());
      const lines = p.units.map((u, i) => `${String(i + 1).padStart(3)}. ${u.id}: ${describeUnit(u)}${u.deps.length ? ` (after ${u.deps.join(', ')})` : ''}`);
      process.stdout.write(
        `recipe ${p.recipe.recipe}: ${p.units.length} runs; domains ${p.data.domains.map((d) => `${d} (${p.data.tokens(d, 'train').length} train / ${p.data.tokens(d, 'val').length} held-out bytes)`).join(', ')}\n${lines.join('\n')}\n`,
      );
      return 0;
    }
    await runRecipe({ recipe: value, baseDir, outDir, workers: o.workers, quiet: o.quiet });
    return 0;
  },
});
