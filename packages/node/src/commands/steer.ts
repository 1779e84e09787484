/**
 * `moelab steer`: SteerMoE — find the experts whose activation rate differs most between two text sets
 * and write the force/block file that `moelab eval --steer` and `moelab generate --steer` apply.
 */
import { resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { planSteering, RoutingObserver, steerEdits, steerScores } from '@moelab/compress';
import { MoelabError } from '@moelab/core';
import { observeWindows, textSet, textWindows, windowsPerplexity } from '../calibration.js';
import { loadCheckpoint } from '../checkpoint.js';
import { writeFileAtomic } from '../fsutil.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, integer, jsonOption, seqOption, useBackend } from './options.js';

export const steer = defineCommand({
  define: () =>
    new Command('steer')
      .summary('SteerMoE: experts linked to --toward vs --away; writes steer.json for eval/generate --steer')
      .description(
        'Run the train split of two text sets through the model, rank every (layer, expert) by the difference of its ' +
          'activation rates (docs/compression.md#steering-steermoe), force the --activate most --toward-linked experts and ' +
          'block the --deactivate most --away-linked ones, print the validation perplexity of both sets before and after, ' +
          'and write the steering file (--out) for `moelab eval --steer` / `moelab generate --steer`.',
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(new Option('--toward <set>', 'text to steer toward: brown, sotu, a path, or corpus:domain'))
      .addOption(new Option('--away <set>', 'text to steer away from (same forms)'))
      .addOption(new Option('--activate <n>', 'experts to force (over all layers; at most top-k per layer)').default(2).argParser(integer('--activate')))
      .addOption(new Option('--deactivate <n>', 'experts to block (over all layers)').default(2).argParser(integer('--deactivate')))
      .addOption(new Option('--calib-tokens <n>', 'tokens per set for the detection (train split)').default(16384).argParser(integer('--calib-tokens')))
      .addOption(
        new Option('--eval-tokens <n>', 'tokens per set for the perplexities (validation split; 0 = skip)').default(8192).argParser(integer('--eval-tokens')),
      )
      .addOption(new Option('--out <file>', 'where to write the steering file').default('steer.json'))
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    if (!o.toward || !o.away)
      throw new MoelabError('usage: moelab steer <checkpoint> --toward SET --away SET [--activate N] [--deactivate M] [--out steer.json]');
    if (o.toward === o.away) throw new MoelabError('--toward and --away name the same text', '--away');
    await useBackend(o.backend, o.json);
    const { model, config } = loadCheckpoint(checkpoint, createDefaultRegistry());
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    const sets = [textSet(o.toward, '--toward'), textSet(o.away, '--away')] as const;
    const observer = new RoutingObserver({ outputs: false, inputs: false });
    sets.forEach((set, i) => {
      const flag = i === 0 ? '--toward' : '--away';
      observeWindows(observer, model, textWindows(set, { split: 'train', seqLen, maxTokens: o.calibTokens }, flag), { domain: set.name }, o.batch);
    });
    const topK = new Map<string, number>();
    for (const m of model.modules()) {
      const r = (m as { router?: { expertsPerToken?: number } }).router;
      if (r?.expertsPerToken !== undefined) topK.set(m.path, r.expertsPerToken);
    }
    const file = planSteering(steerScores(observer, sets[0].name, sets[1].name), sets[0].name, sets[1].name, {
      activate: o.activate,
      deactivate: o.deactivate,
      topK,
    });
    const out = resolve(o.out);
    writeFileAtomic(out, `${JSON.stringify(file, null, 2)}\n`);
    const perplexity =
      o.evalTokens > 0
        ? sets.map((set, i) => {
            const windows = textWindows(set, { split: 'val', seqLen, maxTokens: o.evalTokens }, i === 0 ? '--toward' : '--away');
            return {
              set: set.name,
              before: windowsPerplexity(model, windows, o.batch),
              after: windowsPerplexity(model, windows, o.batch, { routerLogitEdits: steerEdits(file) }),
            };
          })
        : [];
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ steer: out, ...file, perplexity }, null, 2)}\n`);
      return 0;
    }
    const forced = Object.values(file.layers).reduce((a, l) => a + l.force.length, 0);
    const blocked = Object.values(file.layers).reduce((a, l) => a + l.block.length, 0);
    process.stdout.write(`steering toward "${sets[0].name}", away from "${sets[1].name}": ${forced} experts forced, ${blocked} blocked\n`);
    for (const [layer, l] of Object.entries(file.layers))
      process.stdout.write(`  ${layer}: force ${l.force.join(',') || '-'}; block ${l.block.join(',') || '-'}\n`);
    for (const p of perplexity)
      process.stdout.write(
        `validation perplexity of "${p.set}": ${p.before.toFixed(3)} -> ${p.after.toFixed(3)} (${(100 * (p.after / p.before - 1)).toFixed(2)}%)\n`,
      );
    process.stdout.write(`steering file: ${out}\n`);
    return 0;
  },
});
