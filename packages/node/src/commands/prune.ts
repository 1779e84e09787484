/**
 * `moelab prune`: one-shot expert pruning (REAP, frequency, EAN, … or random) from a calibration pass,
 * written as an ordinary checkpoint; prints the validation perplexity before and after.
 */
import { resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { PRUNE_SCORES, type PruneScore, pruneExperts } from '@moelab/compress';
import { MoelabError } from '@moelab/core';
import { calibrate, textSet } from '../calibration.js';
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
      .addOption(new Option('--method <name>', `expert score: ${PRUNE_SCORES.join(', ')}`).default('reap'))
      .addOption(new Option('--ratio <r>', 'fraction of each layer’s experts to remove, in (0, 1)').argParser(number('--ratio')))
      .addOption(new Option('--calib <set>', 'calibration text: brown, sotu, a path, or corpus:domain (default: --data)'))
      .addOption(new Option('--calib-tokens <n>', 'calibration tokens (train split)').default(16384).argParser(integer('--calib-tokens')))
      .addOption(new Option('--preserve-super', 'never prune super experts (largest output activations)'))
      .addOption(new Option('--seed <n>', 'seed of the random method').default(0).argParser(integer('--seed')))
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
    const method = o.method as PruneScore;
    if (!PRUNE_SCORES.includes(method)) throw new MoelabError(`unknown method "${o.method}"; one of ${PRUNE_SCORES.join(', ')}`, '--method');
    if (!(o.ratio > 0 && o.ratio < 1)) throw new MoelabError(`--ratio must be in (0, 1), got ${o.ratio}`, '--ratio');
    await useBackend(o.backend, o.json);
    const registry = createDefaultRegistry();
    const { model, config } = loadCheckpoint(checkpoint, registry);
    const dataName = o.data ?? config.train?.data ?? 'brown';
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    const calib = textSet(o.calib ?? dataName, '--calib');
    const observer = calibrate(model, calib, { seqLen, maxTokens: o.calibTokens, batchSize: o.batch, flag: '--calib' });
    const pruned = pruneExperts(registry, observer, { spec: config.spec, model }, { method, ratio: o.ratio, seed: o.seed, preserveSuper: !!o.preserveSuper });
    const evalOpts = { seed: config.seed ?? 0, seqLen, batchSize: o.batch, batches: o.evalBatches };
    const data = o.evalBatches > 0 ? new CorpusTokens(loadCorpus(dataName)) : undefined;
    const before = data ? evaluateWithMask(model, data, evalOpts) : undefined;
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
    process.stdout.write(`parameters ${summary.parameters.before} -> ${summary.parameters.after}\n`);
    if (before && after)
      process.stdout.write(
        `validation perplexity on ${dataName}: ${before.perplexity.toFixed(3)} -> ${after.perplexity.toFixed(3)} (${(100 * (after.perplexity / before.perplexity - 1)).toFixed(2)}%)\n`,
      );
    process.stdout.write(`checkpoint: ${out}\n`);
    return 0;
  },
});
