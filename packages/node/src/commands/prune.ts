/**
 * `moelab prune`: one-shot expert pruning (REAP, frequency, EAN, … or random) from a calibration pass,
 * or MoE-Pruner's weight pruning inside the experts (`--method moe-pruner`), written as an ordinary
 * checkpoint; prints the validation perplexity before and after.
 */
import { resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { eepSearch, moePrune, PRUNE_SCORES, type PruneScore, planPruning, RoutingObserver, sliceExperts } from '@moelab/compress';
import { MoelabError } from '@moelab/core';
import { calibrate, textSet, textWindows } from '../calibration.js';
import { loadCheckpoint, saveCheckpoint } from '../checkpoint.js';
import { CorpusTokens, loadCorpus } from '../corpus.js';
import { createDefaultRegistry } from '../registry.js';
import { evaluateWithMask } from '../specialise.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, checkpointDataOption, evalBatchesOption, integer, jsonOption, number, seqOption, useBackend } from './options.js';

export const prune = defineCommand({
  define: () =>
    new Command('prune')
      .summary('remove a fraction of every MoE layer’s experts (REAP, frequency, EAN, random, …); writes a checkpoint')
      .description(
        'Score every expert on calibration text (--calib) and remove the --ratio lowest-scoring experts of every MoE layer ' +
          '(router rows and expert weights are sliced; docs/compression.md#expert-pruning). Prints the validation perplexity ' +
          'before and after and writes the pruned model as an ordinary checkpoint (--out).',
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
      .addOption(new Option('--calib <set>', 'calibration text: brown, sotu, a path, or corpus:domain (default: --data)'))
      .addOption(new Option('--calib-tokens <n>', 'calibration tokens (train split)').default(16384).argParser(integer('--calib-tokens')))
      .addOption(new Option('--preserve-super', 'never prune super experts (largest output activations)'))
      .addOption(new Option('--seed <n>', 'seed of the random method and of the eep search').default(0).argParser(integer('--seed')))
      .addOption(new Option('--population <n>', 'eep: candidates per generation').default(8).argParser(integer('--population')))
      .addOption(new Option('--generations <n>', 'eep: generations after the first').default(4).argParser(integer('--generations')))
      .addOption(
        new Option('--search-tokens <n>', 'eep: tokens of --calib (train split) each candidate is scored on')
          .default(2048)
          .argParser(integer('--search-tokens')),
      )
      .addOption(new Option('--out <dir>', 'where to write the pruned checkpoint'))
      .addOption(checkpointDataOption())
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(evalBatchesOption('validation batches for the before/after perplexity (0 = skip)').default(8))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    if (o.ratio === undefined || !o.out)
      throw new MoelabError(
        'usage: moelab prune <checkpoint> --ratio R --out DIR [--method reap|frequency|ean|random|…] [--calib brown|sotu|PATH|corpus:domain]',
      );
    const methods: readonly string[] = [...PRUNE_SCORES, 'eep', 'moe-pruner'];
    if (!methods.includes(o.method)) throw new MoelabError(`unknown method "${o.method}"; one of ${methods.join(', ')}`, '--method');
    if (!(o.ratio > 0 && o.ratio < 1)) throw new MoelabError(`--ratio must be in (0, 1), got ${o.ratio}`, '--ratio');
    if (o.preserveSuper && (o.method === 'eep' || o.method === 'moe-pruner'))
      throw new MoelabError(`--preserve-super guards the expert scores (${PRUNE_SCORES.join(', ')}), not ${o.method}`, '--preserve-super');
    await useBackend(o.backend, o.json);
    const registry = createDefaultRegistry();
    const { model, config } = loadCheckpoint(checkpoint, registry);
    const dataName = o.data ?? config.train?.data ?? 'brown';
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    const calib = textSet(o.calib ?? dataName, '--calib');
    const observer = calibrate(model, calib, {
      seqLen,
      maxTokens: o.calibTokens,
      batchSize: o.batch,
      flag: '--calib',
      observer: new RoutingObserver({ hidden: o.method === 'moe-pruner' }),
    });
    const evalOpts = { seed: config.seed ?? 0, seqLen, batchSize: o.batch, batches: o.evalBatches };
    const data = o.evalBatches > 0 ? new CorpusTokens(loadCorpus(dataName)) : undefined;
    const before = data ? evaluateWithMask(model, data, evalOpts) : undefined;
    if (o.method === 'moe-pruner') {
      // Weights inside the experts, in place: the spec and the parameter count do not change.
      const report = moePrune(observer, { spec: config.spec, model }, { sparsity: o.ratio });
      const after = data ? evaluateWithMask(model, data, evalOpts) : undefined;
      const out = resolve(o.out);
      saveCheckpoint(out, model, { spec: config.spec, step: config.step, seed: config.seed ?? 0, train: config.train });
      const zeroed = report.tensors.reduce((a, t) => a + t.zeroed, 0);
      const total = report.tensors.reduce((a, t) => a + t.total, 0);
      const summary = {
        checkpoint: out,
        method: o.method,
        ratio: o.ratio,
        calib: calib.name,
        expertWeights: { total, zeroed },
        ...(before && after ? { perplexity: { before: before.perplexity, after: after.perplexity }, data: dataName } : {}),
        tensors: report.tensors,
      };
      if (o.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      else {
        process.stdout.write(
          `MoE-Pruner: zeroed ${zeroed} of ${total} expert weights (${((100 * zeroed) / total).toFixed(1)}%; calibration "${calib.name}")\n`,
        );
        for (const t of report.tensors) process.stdout.write(`  ${t.layer}.experts.${t.tensor}: ${t.zeroed} / ${t.total}\n`);
        if (before && after)
          process.stdout.write(
            `validation perplexity on ${dataName}: ${before.perplexity.toFixed(3)} -> ${after.perplexity.toFixed(3)} (${(100 * (after.perplexity / before.perplexity - 1)).toFixed(2)}%)\n`,
          );
        process.stdout.write(`checkpoint: ${out}\n`);
      }
      return 0;
    }
    const source = { spec: config.spec, model };
    let search: { loss: number; baseLoss: number; evaluations: number; history: number[] } | undefined;
    let plan: ReturnType<typeof planPruning>;
    if (o.method === 'eep') {
      // The REAP plan of the calibration pass is one starting candidate; the rest start at random.
      const reap = planPruning(observer, source, { method: 'reap', ratio: o.ratio, preserveSuper: !!o.preserveSuper });
      const windows = textWindows(calib, { split: 'train', seqLen, maxTokens: o.searchTokens }, '--search-tokens');
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
    } else plan = planPruning(observer, source, { method: o.method as PruneScore, ratio: o.ratio, seed: o.seed, preserveSuper: !!o.preserveSuper });
    const method = o.method;
    const pruned = { ...sliceExperts(registry, source, plan.keep), plan };
    const after = data ? evaluateWithMask(pruned.model, data, evalOpts) : undefined;
    const out = resolve(o.out);
    saveCheckpoint(out, pruned.model, { spec: pruned.spec, step: config.step, seed: config.seed ?? 0, train: config.train });
    const layers = [...pruned.plan.keep.entries()].map(([layer, keep]) => ({
      layer,
      kept: keep,
      removed: Array.from(pruned.plan.scores.get(layer)!.keys()).filter((e) => !keep.includes(e)),
      scores: Array.from(pruned.plan.scores.get(layer)!),
      protected: pruned.plan.protected.get(layer) ?? [],
    }));
    const params = (m: typeof model) => m.namedParameters().reduce((a, [, v]) => a + v.size, 0);
    const summary = {
      checkpoint: out,
      method,
      ratio: o.ratio,
      calib: calib.name,
      parameters: { before: params(model), after: params(pruned.model) },
      ...(search ? { search } : {}),
      ...(before && after ? { perplexity: { before: before.perplexity, after: after.perplexity }, data: dataName } : {}),
      layers,
    };
    if (o.json) {
      process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      return 0;
    }
    process.stdout.write(
      `pruned ${layers.reduce((a, l) => a + l.removed.length, 0)} experts by ${method} (ratio ${o.ratio}, calibration "${calib.name}", ${observer.layers.values().next().value?.tokens ?? 0} tokens)\n`,
    );
    for (const l of layers)
      process.stdout.write(
        `  ${l.layer}: kept ${l.kept.join(',')}; removed ${l.removed.join(',')}${l.protected.length ? `; super experts kept ${l.protected.join(',')}` : ''}\n`,
      );
    if (search)
      process.stdout.write(
        `eep search: ${search.evaluations} candidates, search loss ${search.baseLoss.toFixed(4)} unpruned, best per generation ${search.history.map((l) => l.toFixed(4)).join(' ')}\n`,
      );
    process.stdout.write(`parameters ${summary.parameters.before} -> ${summary.parameters.after}\n`);
    if (before && after)
      process.stdout.write(
        `validation perplexity on ${dataName}: ${before.perplexity.toFixed(3)} -> ${after.perplexity.toFixed(3)} (${(100 * (after.perplexity / before.perplexity - 1)).toFixed(2)}%)\n`,
      );
    process.stdout.write(`checkpoint: ${out}\n`);
    return 0;
  },
});
