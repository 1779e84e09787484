/** `moelab inspect`: a checkpoint's spec, parameter counts and per-layer routing statistics on a text. */
import { Command, Option } from '@commander-js/extra-typings';
import { ByteTokenizer, forwardContext, MoelabError, mergeRouting, modelSummary, Rng, routingMetrics, tf } from '@moelab/core';
import { loadCheckpoint } from '../checkpoint.js';
import { CorpusTokens, loadCorpus } from '../corpus.js';
import { createDefaultRegistry } from '../registry.js';
import { formatTable } from '../table.js';
import { defineCommand } from './command.js';
import { backendOption, dataOption, jsonOption, useBackend } from './options.js';

export const inspect = defineCommand({
  define: () =>
    new Command('inspect')
      .summary('spec, parameter counts and per-layer routing on a text (--text)')
      .description(
        "Print a checkpoint's spec and parameter counts, run one forward pass on --text (default: the start of " +
          "--data's validation split) and show each MoE layer's routing: load per expert, entropies, CV, MaxVio, " +
          'drop rates, experts per token, z-loss, saturation, and the experts each token chose in the first layer.',
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(new Option('--text <text>', 'text to route (cut to the context length)'))
      .addOption(dataOption().default('brown', 'brown (used when --text is not given)'))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    await useBackend(o.backend, true);
    const { model, config } = loadCheckpoint(checkpoint, createDefaultRegistry());
    const summary = modelSummary(model);
    const tok = new ByteTokenizer();
    let ids: Int32Array;
    if (o.text) ids = tok.encode(o.text);
    else ids = new CorpusTokens(loadCorpus(o.data)).tokens('val').slice(0, model.contextLength);
    ids = ids.slice(0, model.contextLength);
    if (ids.length === 0) throw new MoelabError('--text is empty');
    const ctx = forwardContext(new Rng(0), false, { assignments: new Map() });
    tf.tidy(() => {
      model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), ctx);
    });
    const layers = [...mergeRouting(ctx.routing).values()].map((s) => ({
      ...routingMetrics(s),
      experts: s.numExperts,
      // kept for older readers: raw kept load and the mean per-token entropy in nats
      entropy: s.entropy,
      load: s.load,
    }));
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ spec: config.spec, step: config.step, ...summary, tokens: ids.length, layers }, null, 2)}\n`);
      return 0;
    }
    process.stdout.write(
      `checkpoint: ${checkpoint} (step ${config.step})\nspec: ${JSON.stringify(config.spec)}\nparameters: ${summary.parameters.toLocaleString()}  active per token: ${summary.activeParameters.toLocaleString()}  non-embedding: ${summary.nonEmbeddingParameters.toLocaleString()}\nforward FLOPs per token (n_ctx ${model.contextLength}, attention included): ${summary.forwardFlopsPerToken.toLocaleString()}\n`,
    );
    if (layers.length === 0) {
      process.stdout.write('no MoE layers (dense model)\n');
      return 0;
    }
    const f3 = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(3));
    const pct = (x: number | undefined) => (x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);
    process.stdout.write(`\nrouting on ${ids.length} tokens (entropies normalised by log E; load = intended assignments):\n`);
    process.stdout.write(
      `${formatTable(
        [
          'layer',
          'experts',
          'load per expert (%)',
          'entropy',
          'marg. entropy',
          'CV',
          'MaxVio',
          'drop',
          'token drop',
          'experts/token [min-max]',
          'z-loss',
          'saturation',
        ],
        layers.map((l) => [
          l.layer,
          l.experts,
          l.loadFraction.map((x) => (100 * x).toFixed(0)).join(' '),
          f3(l.routingEntropy),
          f3(l.marginalEntropy),
          l.cv.toFixed(3),
          l.maxVio.toFixed(3),
          pct(l.dropRate),
          pct(l.tokenDropRate),
          `${l.expertsPerToken.toFixed(2)} [${l.expertsPerTokenMin ?? '-'}-${l.expertsPerTokenMax ?? '-'}]`,
          f3(l.zLoss),
          pct(l.saturation),
        ]),
      )}\n`,
    );
    const first = [...(ctx.assignments?.entries() ?? [])][0];
    if (first) {
      const [layer, calls] = first;
      const call = calls[0]!;
      const per: number[][] = Array.from({ length: call.tokens }, () => []);
      for (let n = 0; n < call.tokenIndex.length; n++) per[call.tokenIndex[n]!]!.push(call.expertIndex[n]!);
      const shown = Math.min(40, ids.length);
      process.stdout.write(`\nexperts chosen per token in ${layer} (first ${shown} tokens):\n`);
      for (let t = 0; t < shown; t++) process.stdout.write(`  ${JSON.stringify(tok.decode([ids[t]!])).padEnd(6)} -> ${per[t]!.join(',')}\n`);
    }
    return 0;
  },
});
