/**
 * `moelab mask`: find the experts specialised in a domain of the corpus (routing statistics on the
 * train split), mask them, and print each domain's validation perplexity before and after; writes the
 * mask for `moelab eval --mask`. `--domain all` masks each domain in turn and prints the specificity table.
 */
import { resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { MoelabError } from '@moelab/core';
import { loadCheckpoint } from '../checkpoint.js';
import { loadCorpus } from '../corpus.js';
import { createDefaultRegistry } from '../registry.js';
import type { SpecialisationScore } from '../specialise.js';
import { formatTable } from '../table.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, checkpointDataOption, integer, jsonOption, number, seqOption, useBackend } from './options.js';

export const mask = defineCommand({
  define: () =>
    new Command('mask')
      .summary('mask the experts specialised in --domain; per-domain perplexity before/after; writes the mask')
      .description(
        'Find the experts specialised in --domain (routing statistics on the train split), mask them, print ' +
          "each domain's validation perplexity before and after, and write the mask (for `moelab eval --mask`). " +
          '--domain all masks each domain in turn and prints the specificity table.',
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(new Option('--domain <label>', 'the domain to mask (a document label of --data), or all'))
      .addOption(checkpointDataOption())
      .addOption(new Option('--fraction <f>', "mask this fraction of each layer's experts, in (0, 1] (default 0.1)").argParser(number('--fraction')))
      .addOption(new Option('--threshold <s>', 'mask the experts whose score is at least S (instead of --fraction)').argParser(number('--threshold')))
      .addOption(new Option('--score <name>', 'specialisation score: share-diff, share-ratio or skew').default('share-diff'))
      .addOption(
        new Option('--min-share <x>', "candidates carry at least X of the domain's assignments, in [0, 1] (default 0.5/E)").argParser(number('--min-share')),
      )
      .addOption(new Option('--domain-tokens <n>', 'tokens per domain for the perplexities').default(8192).argParser(integer('--domain-tokens')))
      .addOption(
        new Option('--stats-tokens <n>', 'tokens per domain for the routing statistics (default: --domain-tokens)').argParser(integer('--stats-tokens')),
      )
      .addOption(new Option('--level <n>', "with --domain all: labels cut to their first N '/'-parts (e.g. 1 = SOTU eras)").argParser(integer('--level')))
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(new Option('--out <file>', 'where to write the mask').default('mask.json'))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    if (!o.domain)
      throw new MoelabError(
        'usage: moelab mask <checkpoint-dir> --domain LABEL [--data brown|sotu|PATH] [--fraction 0.1 | --threshold S] [--score share-diff|share-ratio|skew] [--out mask.json]',
      );
    const sp = await import('../specialise.js');
    const score = o.score as SpecialisationScore;
    if (!sp.SPECIALISATION_SCORES.includes(score)) throw new MoelabError(`--score must be one of ${sp.SPECIALISATION_SCORES.join(', ')}, got "${o.score}"`);
    const { fraction, threshold, minShare } = o;
    if (minShare !== undefined && !(minShare >= 0 && minShare <= 1)) throw new MoelabError(`--min-share must be in [0, 1], got ${minShare}`);
    if (fraction !== undefined && threshold !== undefined) throw new MoelabError('give --fraction or --threshold, not both');
    if (fraction !== undefined && !(fraction > 0 && fraction <= 1)) throw new MoelabError(`--fraction must be in (0, 1], got ${fraction}`);
    await useBackend(o.backend, o.json);
    const { model, config } = loadCheckpoint(checkpoint, createDefaultRegistry());
    const dataName = o.data ?? config.train?.data ?? 'brown';
    const corpus = loadCorpus(dataName);
    const all = o.domain === 'all';
    const level = all ? o.level : sp.labelLevel(corpus, o.domain);
    const maskable = sp.maskableLayers(model);
    if (maskable.size === 0) throw new MoelabError('the model has no layer whose experts can be masked (moe, monet, peer, fff)', checkpoint);
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    const common = { seqLen, level, maxTokens: o.domainTokens, batchSize: o.batch };
    const { statsTokens } = o;
    if (all) {
      const { effects } = sp.maskEachDomain(model, corpus, { ...common, statsTokens, score, fraction, threshold, minShare });
      if (o.json) {
        process.stdout.write(`${JSON.stringify({ data: dataName, score, fraction, threshold, minShare, effects }, null, 2)}\n`);
        return 0;
      }
      const pc = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)}%`;
      const n = effects.length;
      process.stdout.write(
        `each domain's experts masked in turn (${score}, ${threshold !== undefined ? `threshold ${threshold}` : `fraction ${fraction ?? 0.1}`}); validation perplexity change:\n`,
      );
      process.stdout.write(
        `${formatTable(
          ['masked domain', 'experts masked', 'on it', `mean on the other ${n - 1}`, 'largest other', 'rank'],
          effects.map((e) => [e.domain, e.maskedExperts, pc(e.target), pc(e.othersMean), pc(e.othersMax), `${e.rank} of ${n}`]),
        )}\n`,
      );
      const meanRank = effects.reduce((a, e) => a + e.rank, 0) / n;
      process.stdout.write(`\nmean rank ${meanRank.toFixed(2)} (1 = perfectly domain-specific, ${((n + 1) / 2).toFixed(1)} = no specificity)\n`);
      return 0;
    }
    const stats = sp.collectDomainRouting(model, corpus, { ...common, split: 'train', maxTokens: statsTokens ?? common.maxTokens });
    const file = { ...sp.selectExperts(stats, o.domain, maskable, { score, fraction, threshold, minShare }), data: dataName };
    const before = sp.evaluateDomains(model, corpus, { ...common, split: 'val' });
    const after = sp.evaluateDomains(model, corpus, { ...common, split: 'val', mask: sp.maskOf(file) });
    const out = resolve(o.out);
    sp.writeMaskFile(out, file);
    const total = [...maskable.values()].reduce((a, l) => a + l.numExperts, 0);
    const rise = (i: number) => after[i]!.perplexity / before[i]!.perplexity - 1;
    const target = before.findIndex((b) => b.domain === o.domain);
    const others = before.map((_, i) => i).filter((i) => i !== target);
    const meanOthers = others.reduce((a, i) => a + rise(i), 0) / Math.max(1, others.length);
    if (o.json) {
      const domains = before.map((b, i) => ({ ...b, maskedLoss: after[i]!.loss, maskedPerplexity: after[i]!.perplexity }));
      process.stdout.write(`${JSON.stringify({ mask: out, ...file, maskedExperts: sp.maskedCount(file), totalExperts: total, domains }, null, 2)}\n`);
      return 0;
    }
    const how = threshold !== undefined ? `threshold ${threshold}` : `fraction ${file.fraction}`;
    process.stdout.write(
      `masked ${sp.maskedCount(file)} of ${total} experts in ${Object.keys(file.layers).length} layers for "${o.domain}" (${score}, ${how}; statistics on the train split, at most ${statsTokens ?? common.maxTokens} tokens per domain)\n`,
    );
    for (const [layer, ids] of Object.entries(file.layers)) process.stdout.write(`  ${layer}: ${ids.length ? ids.join(',') : '(none)'}\n`);
    const pct = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)}%`;
    process.stdout.write('\nvalidation perplexity per domain (* = masked domain):\n');
    process.stdout.write(
      `${formatTable(
        ['domain', 'tokens', 'ppl before', 'ppl masked', 'change'],
        before.map((b, i) => [`${i === target ? '* ' : ''}${b.domain}`, b.tokens, b.perplexity.toFixed(3), after[i]!.perplexity.toFixed(3), pct(rise(i))]),
      )}\n`,
    );
    process.stdout.write(`\n"${o.domain}": ${pct(rise(target))}; other domains: mean ${pct(meanOthers)}\nmask: ${out}\n`);
    return 0;
  },
});
