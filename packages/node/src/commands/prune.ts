/**
 * `moelab prune`: one-shot expert pruning (REAP, frequency, EAN, EASY-EP, … or random) from a
 * calibration pass — one domain, or several with the mixed-domain rule — or EEP's searched keep-sets
 * (optionally followed by its merging phase), or MoE-Pruner's weight pruning inside the experts
 * (optionally followed by expert-wise distillation from the unpruned model), written as an ordinary
 * checkpoint; prints the validation perplexity before and after.
 */
import { Command, Option } from '@commander-js/extra-typings';
import {
  collectExpertTargets,
  distilExperts,
  eepMerge,
  eepSearch,
  moePrune,
  PRUNE_SCORES,
  type PrunePlan,
  type PruneScore,
  planPruning,
  RoutingObserver,
  sliceExperts,
} from '@moelab/compress';
import { MoelabError, type NodeSpec } from '@moelab/core';
import { textWindows } from '../calibration.js';
import type { Model } from '../checkpoint.js';
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
import { backendOption, batchOption, checkpointDataOption, integer, jsonOption, number, seqOption, useBackend } from './options.js';

export const prune = defineCommand({
  define: () =>
    new Command('prune')
      .summary('remove a fraction of every MoE layer’s experts (REAP, frequency, EAN, EASY-EP, EEP, random, …); writes a checkpoint')
      .description(
        'Score every expert on calibration text (--calib) and remove the --ratio lowest-scoring experts of every MoE layer ' +
          '(router rows and expert weights are sliced; docs/compression.md#expert-pruning). Several calibration texts ' +
          '(--calib a,b) combine by the mixed-domain rule (each text’s scores normalised, then summed). --method eep searches the ' +
          'keep-sets (--merge-generations adds its merging phase); --method moe-pruner zeroes weights inside the experts ' +
          '(--distil-steps adds expert-wise distillation). Prints the validation perplexity before and after and writes the ' +
          'result as an ordinary checkpoint (--out).',
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(
        new Option('--method <name>', `expert score (${PRUNE_SCORES.join(', ')}), eep (searched keep-sets) or moe-pruner (weights inside the experts)`).default(
          'reap',
        ),
      )
      .addOption(
        new Option('--ratio <r>', 'fraction of each layer’s experts to remove, in (0, 1); moe-pruner: of each expert neuron’s weights to zero').argParser(
          number('--ratio'),
        ),
      )
      .addOption(calibOption())
      .addOption(calibTokensOption())
      .addOption(new Option('--preserve-super', 'never prune super experts (largest output activations)'))
      .addOption(new Option('--seed <n>', 'seed of the random method and of the eep search').default(0).argParser(integer('--seed')))
      .addOption(new Option('--population <n>', 'eep: candidates per generation').default(8).argParser(integer('--population')))
      .addOption(new Option('--generations <n>', 'eep: generations after the first').default(4).argParser(integer('--generations')))
      .addOption(
        new Option('--search-tokens <n>', 'eep: tokens of --calib (train split) each candidate is scored on')
          .default(2048)
          .argParser(integer('--search-tokens')),
      )
      .addOption(
        new Option('--merge-generations <n>', 'eep: generations of the merging phase after the search (0 = pruning only)')
          .default(0)
          .argParser(integer('--merge-generations')),
      )
      .addOption(new Option('--merge-sigma <x>', 'eep merging phase: size of a mutation').default(0.05).argParser(number('--merge-sigma')))
      .addOption(
        new Option('--distil-steps <n>', 'moe-pruner: expert-wise distillation steps from the unpruned model (0 = none)')
          .default(0)
          .argParser(integer('--distil-steps')),
      )
      .addOption(new Option('--distil-lr <x>', 'moe-pruner distillation: Adam learning rate').default(1e-3).argParser(number('--distil-lr')))
      .addOption(new Option('--out <dir>', 'where to write the pruned checkpoint'))
      .addOption(checkpointDataOption())
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(beforeAfterOption())
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    if (o.ratio === undefined || !o.out)
      throw new MoelabError(
        'usage: moelab prune <checkpoint> --ratio R --out DIR [--method reap|frequency|ean|easy-ep|eep|moe-pruner|random|…] [--calib brown|sotu|PATH|corpus:domain[,…]]',
      );
    const methods: readonly string[] = [...PRUNE_SCORES, 'eep', 'moe-pruner'];
    if (!methods.includes(o.method)) throw new MoelabError(`unknown method "${o.method}"; one of ${methods.join(', ')}`, '--method');
    if (!(o.ratio > 0 && o.ratio < 1)) throw new MoelabError(`--ratio must be in (0, 1), got ${o.ratio}`, '--ratio');
    if (o.preserveSuper && (o.method === 'eep' || o.method === 'moe-pruner'))
      throw new MoelabError(`--preserve-super guards the expert scores (${PRUNE_SCORES.join(', ')}), not ${o.method}`, '--preserve-super');
    if (o.mergeGenerations !== 0 && o.method !== 'eep')
      throw new MoelabError(`--merge-generations is EEP's merging phase; it needs --method eep, not ${o.method}`, '--merge-generations');
    if (o.mergeGenerations < 0) throw new MoelabError(`--merge-generations must be 0 or more, got ${o.mergeGenerations}`, '--merge-generations');
    if (o.distilSteps !== 0 && o.method !== 'moe-pruner')
      throw new MoelabError(`--distil-steps is MoE-Pruner's recovery; it needs --method moe-pruner, not ${o.method}`, '--distil-steps');
    await useBackend(o.backend, o.json);
    const input = openForCompression(checkpoint, o);
    const { registry, model, config, seqLen } = input;
    const sets = calibSets(o.calib ?? input.dataName);
    const calibName = sets.map((s) => s.name).join(',');
    const observers = calibrateSets(input, sets, {
      calibTokens: o.calibTokens,
      batch: o.batch,
      // MoE-Pruner sums its statistics over every text; the expert scores combine per text.
      merged: o.method === 'moe-pruner',
      observer: () => new RoutingObserver({ hidden: o.method === 'moe-pruner' }),
    });
    const write = (m: Model, spec: NodeSpec) => saveCompressed(o.out!, m, spec, input);

    if (o.method === 'moe-pruner') {
      // Weights inside the experts, in place: the spec and the parameter count do not change.
      const teacher =
        o.distilSteps > 0
          ? collectExpertTargets(
              model,
              sets.flatMap((s) => textWindows(s, { split: 'train', seqLen, maxTokens: o.calibTokens }, '--calib')),
              { batchSize: o.batch },
            )
          : undefined;
      const report = moePrune(observers[0]!, { spec: config.spec, model }, { sparsity: o.ratio });
      const distil = teacher ? distilExperts(model, teacher, { steps: o.distilSteps, lr: o.distilLr }) : undefined;
      const after = input.evaluate(model);
      const out = write(model, config.spec);
      const zeroed = report.tensors.reduce((a, t) => a + t.zeroed, 0);
      const total = report.tensors.reduce((a, t) => a + t.total, 0);
      const summary = {
        checkpoint: out,
        method: o.method,
        ratio: o.ratio,
        calib: calibName,
        expertWeights: { total, zeroed },
        ...(distil ? { distillation: { steps: o.distilSteps, lr: o.distilLr, lossBefore: distil.losses[0], lossAfter: distil.losses.at(-1) } } : {}),
        ...perplexityJson(input, after),
        tensors: report.tensors,
      };
      if (o.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      else {
        process.stdout.write(`MoE-Pruner: zeroed ${zeroed} of ${total} expert weights (${((100 * zeroed) / total).toFixed(1)}%; calibration "${calibName}")\n`);
        for (const t of report.tensors) process.stdout.write(`  ${t.layer}.experts.${t.tensor}: ${t.zeroed} / ${t.total}\n`);
        if (distil)
          process.stdout.write(
            `expert-wise distillation: ${o.distilSteps} steps, loss ${distil.losses[0]!.toExponential(3)} -> ${distil.losses.at(-1)!.toExponential(3)}\n`,
          );
        process.stdout.write(`${perplexityLine(input.dataName, input.before, after)}checkpoint: ${out}\n`);
      }
      return 0;
    }

    const source = { spec: config.spec, model };
    let search: { loss: number; baseLoss: number; evaluations: number; history: number[] } | undefined;
    let merge: { loss: number; startLoss: number; evaluations: number; history: number[] } | undefined;
    let plan: PrunePlan;
    let result: { spec: NodeSpec; model: Model };
    if (o.method === 'eep') {
      // The REAP plan of the calibration pass is one starting candidate; the rest start at random.
      const reap = planPruning(observers, source, { method: 'reap', ratio: o.ratio });
      const share = Math.max(1, Math.floor(o.searchTokens / sets.length));
      const windows = sets.flatMap((s) => textWindows(s, { split: 'train', seqLen, maxTokens: share }, '--search-tokens'));
      const found = eepSearch(model, windows, {
        ratio: o.ratio,
        population: o.population,
        generations: o.generations,
        seed: o.seed,
        batchSize: o.batch,
        init: [reap.keep],
      });
      search = { loss: found.loss, baseLoss: found.baseLoss, evaluations: found.evaluations, history: found.history };
      plan = { keep: found.keep, scores: reap.scores, protected: new Map() };
      if (o.mergeGenerations > 0) {
        const merged = eepMerge(registry, source, windows, {
          keep: found.keep,
          population: o.population,
          generations: o.mergeGenerations,
          sigma: o.mergeSigma,
          seed: o.seed,
          batchSize: o.batch,
        });
        merge = { loss: merged.loss, startLoss: merged.startLoss, evaluations: merged.evaluations, history: merged.history };
        result = merged;
      } else result = sliceExperts(registry, source, plan.keep);
    } else {
      plan = planPruning(observers, source, { method: o.method as PruneScore, ratio: o.ratio, seed: o.seed, preserveSuper: !!o.preserveSuper });
      result = sliceExperts(registry, source, plan.keep);
    }
    const after = input.evaluate(result.model);
    const out = write(result.model, result.spec);
    const layers = [...plan.keep.entries()].map(([layer, keep]) => ({
      layer,
      kept: keep,
      removed: Array.from(plan.scores.get(layer)!.keys()).filter((e) => !keep.includes(e)),
      scores: Array.from(plan.scores.get(layer)!),
      protected: plan.protected.get(layer) ?? [],
    }));
    const params = (m: Model) => m.namedParameters().reduce((a, [, v]) => a + v.size, 0);
    const summary = {
      checkpoint: out,
      method: o.method,
      ratio: o.ratio,
      calib: calibName,
      parameters: { before: params(model), after: params(result.model) },
      ...(search ? { search } : {}),
      ...(merge ? { merge } : {}),
      ...perplexityJson(input, after),
      layers,
    };
    if (o.json) {
      process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      return 0;
    }
    const tokens = observers.reduce((a, obs) => a + (obs.layers.values().next().value?.tokens ?? 0), 0);
    process.stdout.write(
      `pruned ${layers.reduce((a, l) => a + l.removed.length, 0)} experts by ${o.method} (ratio ${o.ratio}, calibration "${calibName}", ${tokens} tokens)\n`,
    );
    for (const l of layers)
      process.stdout.write(
        `  ${l.layer}: kept ${l.kept.join(',')}; removed ${l.removed.join(',')}${l.protected.length ? `; super experts kept ${l.protected.join(',')}` : ''}\n`,
      );
    if (search)
      process.stdout.write(
        `eep search: ${search.evaluations} candidates, search loss ${search.baseLoss.toFixed(4)} unpruned, best per generation ${search.history.map((l) => l.toFixed(4)).join(' ')}\n`,
      );
    if (merge)
      process.stdout.write(
        `eep merging: ${merge.evaluations} candidates, search loss ${merge.startLoss.toFixed(4)} pruned, best per generation ${merge.history.map((l) => l.toFixed(4)).join(' ')}\n`,
      );
    process.stdout.write(`parameters ${summary.parameters.before} -> ${summary.parameters.after}\n`);
    process.stdout.write(`${perplexityLine(input.dataName, input.before, after)}checkpoint: ${out}\n`);
    return 0;
  },
});
