/**
 * `moelab analyse`: the routing and expert report of a checkpoint (load balance, entropy, co-activation,
 * domain specialisation, expert weight and router similarity, super experts) as a table and as JSON.
 */
import { Command, Option } from '@commander-js/extra-typings';
import { analyse as analyseModel, RoutingObserver } from '@moelab/compress';
import { MoelabError } from '@moelab/core';
import { observeWindows, textSet, textWindows } from '../calibration.js';
import { loadCheckpoint } from '../checkpoint.js';
import { writeFileAtomic } from '../fsutil.js';
import { createDefaultRegistry } from '../registry.js';
import { domainLabels } from '../specialise.js';
import { formatTable } from '../table.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, checkpointDataOption, integer, jsonOption, seqOption, useBackend } from './options.js';

export const analyseCommand = defineCommand({
  define: () =>
    new Command('analyse')
      .summary('routing and expert report: load, entropy, co-activation, domain specialisation, similarity, super experts')
      .description(
        'Run each domain of --data (at most --tokens per domain, train split) through the model with the routing observer and report, per MoE layer: load CV, MaxVio, dead experts, normalised entropy, mean co-activation PMI, the largest domain JS divergence, expert weight and router-logit similarity, and super experts (docs/compression.md#analysis). --json prints the whole report; --out writes it.',
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(checkpointDataOption())
      .addOption(new Option('--tokens <n>', 'tokens per domain').default(4096).argParser(integer('--tokens')))
      .addOption(new Option('--out <file>', 'also write the JSON report to this file'))
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    await useBackend(o.backend, o.json);
    const { model, config } = loadCheckpoint(checkpoint, createDefaultRegistry());
    const dataName = o.data ?? config.train?.data ?? 'brown';
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    const corpus = textSet(dataName, '--data').corpus;
    const observer = new RoutingObserver({ inputs: false });
    let seen = 0;
    for (const domain of domainLabels(corpus)) {
      const set = { name: domain, corpus, domain, level: undefined };
      let windows: Int32Array[];
      try {
        windows = textWindows(set, { split: 'train', seqLen, maxTokens: o.tokens }, '--data');
      } catch {
        continue; // a domain shorter than one window
      }
      observeWindows(observer, model, windows, { domain }, o.batch);
      seen++;
    }
    if (seen === 0) throw new MoelabError(`no domain of ${corpus.name} has one window of ${seqLen + 1} tokens`, '--data');
    const report = analyseModel(model, observer);
    if (report.layers.length === 0) throw new MoelabError('the model has no moe layer with routed experts to analyse', checkpoint);
    const json = `${JSON.stringify({ checkpoint, data: dataName, ...report }, null, 2)}\n`;
    if (o.out) writeFileAtomic(o.out, json);
    if (o.json) {
      process.stdout.write(json);
      return 0;
    }
    const f = (x: number | null, d = 3) => (x === null ? '-' : x.toFixed(d));
    process.stdout.write(
      `${formatTable(
        ['layer', 'experts', 'tokens', 'load CV', 'MaxVio', 'dead', 'H/log E', 'mean PMI', 'max domain JS', 'weight cos', 'router cos', 'super experts'],
        report.layers.map((l) => {
          const js = Object.entries(l.domainJS).sort((a, b) => b[1] - a[1])[0];
          const wcos = Object.values(l.weightSimilarity);
          return [
            l.layer,
            l.experts,
            l.tokens,
            f(l.cv),
            f(l.maxVio),
            l.dead,
            f(l.normalisedEntropy),
            f(l.meanPMI),
            js ? `${js[1].toFixed(3)} (${js[0]})` : '-',
            wcos.length ? f(wcos.reduce((a, b) => a + b, 0) / wcos.length) : '-',
            f(l.routerSimilarity),
            l.superExperts.join(',') || '-',
          ];
        }),
      )}\n`,
    );
    if (o.out) process.stdout.write(`report: ${o.out}\n`);
    return 0;
  },
});
