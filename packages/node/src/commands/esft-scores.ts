/**
 * `moelab esft-scores`: the ESFT relevance scores of an MoE checkpoint on a task's training text (token
 * selection ratio and average gate score of every routed expert of every MoE layer, arXiv 2407.01906) and
 * the expert selection of eq. 8, written in the released formats of github.com/deepseek-ai/ESFT:
 * `scores.json` ({token_scores, gate_scores}) and `expert_config.json` ({experts, shared_experts,
 * non_expert_modules}), the latter ready for `moelab finetune --method esft`. docs/finetune.md#esft.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { MoelabError, Rng } from '@moelab/core';
import { ESFT_DEFAULT_P, type EsftScoreKind, esftExpertConfig, esftLayers, esftScores, scoreArray } from '@moelab/finetune';
import { loadCheckpoint } from '../checkpoint.js';
import { CorpusTokens, loadCorpus } from '../corpus.js';
import { writeFileAtomic } from '../fsutil.js';
import { createDefaultRegistry } from '../registry.js';
import { formatTable } from '../table.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, checkpointDataOption, integer, jsonOption, number, seedOption, seqOption, useBackend } from './options.js';

export const esftScoresCommand = defineCommand({
  define: () =>
    new Command('esft-scores')
      .summary('ESFT expert relevance scores of a checkpoint on --data and the expert selection (scores.json, expert_config.json)')
      .description(
        'Score every routed expert of every MoE layer on the training split of --data (ESFT, arXiv 2407.01906): the token ' +
          'selection ratio r_i (share of routing decisions, each token split over its K experts) and the average gate score ' +
          'g_i. Then select per layer the experts of highest score until their cumulative score reaches p (eq. 8). Writes ' +
          '<out>/scores.json and <out>/expert_config.json in the formats released with the paper.',
      )
      .argument('<checkpoint>', 'checkpoint directory of an MoE model (runs/<name>/checkpoint)')
      .addOption(checkpointDataOption())
      .addOption(new Option('--tokens <n>', 'training tokens to score (the paper used 2^17 = 131072)').default(32768).argParser(integer('--tokens')))
      .addOption(new Option('--score <kind>', 'score that drives the selection: token (ESFT-Token) or gate (ESFT-Gate)').default('token'))
      .addOption(new Option('--p <x>', 'cumulative-score threshold in (0, 1] (default 0.2 for token, 0.1 for gate)').argParser(number('--p')))
      .addOption(new Option('--shared-experts', 'mark the shared experts as trained too in expert_config.json'))
      .addOption(seqOption("window length in tokens (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(seedOption("seed of the scored windows (default: the checkpoint's)"))
      .addOption(new Option('--out <dir>', 'where to write scores.json and expert_config.json').default('esft'))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    const score = o.score as EsftScoreKind;
    if (score !== 'token' && score !== 'gate') throw new MoelabError(`--score must be token or gate, got "${o.score}"`);
    const p = o.p ?? ESFT_DEFAULT_P[score];
    if (!(p > 0 && p <= 1)) throw new MoelabError(`--p must be in (0, 1], got ${p}`);
    if (!(o.tokens >= 1)) throw new MoelabError(`--tokens must be at least 1, got ${o.tokens}`);
    if (!(o.batch >= 1)) throw new MoelabError(`--batch must be at least 1, got ${o.batch}`);
    await useBackend(o.backend, o.json);
    const { model, config } = loadCheckpoint(checkpoint, createDefaultRegistry());
    const layers = esftLayers(model, checkpoint);
    const dataName = o.data ?? config.train?.data ?? 'brown';
    const data = new CorpusTokens(loadCorpus(dataName));
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    if (!(seqLen >= 1 && seqLen <= model.contextLength))
      throw new MoelabError(`--seq must be in [1, ${model.contextLength}] (the context length), got ${seqLen}`);
    const seed = o.seed ?? config.seed ?? 0;
    const batches = Math.ceil(o.tokens / (o.batch * seqLen));
    const windows = function* () {
      for (let i = 0; i < batches; i++) {
        const raw = data.batch(Rng.derive(seed, 'esft-data', i), o.batch, seqLen, 'train');
        // Rows come as [B, T+1] (inputs and next-token targets); scoring needs the inputs only.
        const ids = new Int32Array(o.batch * seqLen);
        for (let b = 0; b < o.batch; b++) ids.set(raw.subarray(b * (seqLen + 1), b * (seqLen + 1) + seqLen), b * seqLen);
        yield { ids, batchSize: o.batch, seqLen };
      }
    };
    const { file, tallies } = esftScores(model, windows(), { seed, where: checkpoint });
    const selection = esftExpertConfig(file, { score, p, sharedExperts: o.sharedExperts ?? false });
    const out = resolve(o.out);
    mkdirSync(out, { recursive: true });
    const scoresPath = join(out, 'scores.json');
    const configPath = join(out, 'expert_config.json');
    writeFileAtomic(scoresPath, `${JSON.stringify(file, null, 2)}\n`);
    writeFileAtomic(configPath, `${JSON.stringify(selection, null, 2)}\n`);
    const perExpert = new Map(layers.map((l) => [l.key, l.layer.experts.parametersPerExpert()]));
    const rows = tallies.map((t) => {
      const ids = selection.experts[t.key]!;
      const s = scoreArray((score === 'token' ? file.token_scores : file.gate_scores)[t.key]!, t.key);
      const covered = ids.reduce((a, e) => a + s[e]!, 0);
      return {
        layer: t.key,
        path: t.path,
        experts: t.numExperts,
        decisions: t.decisions,
        selected: ids,
        covered,
        trainable: ids.length * perExpert.get(t.key)!,
      };
    });
    const trainable = rows.reduce((a, r) => a + r.trainable, 0);
    const total = model.parameterCount();
    if (o.json) {
      process.stdout.write(
        `${JSON.stringify({ data: dataName, score, p, tokens: tallies[0]?.decisions ?? 0, scores: scoresPath, config: configPath, layers: rows, trainable, parameters: total }, null, 2)}\n`,
      );
      return 0;
    }
    process.stdout.write(
      `ESFT ${score} scores of ${rows.length} MoE layers on ${batches * o.batch * seqLen} training tokens of ${dataName}; selection with p = ${p}:\n`,
    );
    process.stdout.write(
      `${formatTable(
        ['layer', 'module', 'selected experts', 'of', `${score} score covered`, 'trainable'],
        rows.map((r) => [r.layer, r.path, r.selected.join(','), r.experts, r.covered.toFixed(4), r.trainable]),
      )}\n`,
    );
    process.stdout.write(
      `\ntrainable with ESFT: ${trainable} of ${total} parameters (${((100 * trainable) / total).toFixed(2)}%)\nscores: ${scoresPath}\nexpert config: ${configPath}\n`,
    );
    return 0;
  },
});
