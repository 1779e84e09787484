/** `moelab generate`: sample a continuation of a prompt from a checkpoint (optionally steered, or SCMoE self-contrast). */
import { Command, Option } from '@commander-js/extra-typings';
import { scmoeContrast, steerEdits } from '@moelab/compress';
import { generateTokens } from '@moelab/core';
import { readSteerFile } from '../calibration.js';
import { loadCheckpoint, loadCheckpointTokenizer } from '../checkpoint.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { backendOption, integer, number, seedOption, useBackend } from './options.js';

export const generate = defineCommand({
  define: () =>
    new Command('generate')
      .summary('sample text (--prompt, --tokens, --temperature, --top-k; KV-cached, --no-cache re-runs the window per token)')
      .description('Continue --prompt with tokens sampled from a checkpoint; prints the prompt and its continuation.')
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(new Option('--prompt <text>', 'text to continue').default('The '))
      .addOption(new Option('--tokens <n>', 'new tokens to sample').default(200).argParser(integer('--tokens')))
      .addOption(new Option('--temperature <x>', 'sampling temperature (0 = greedy)').default(0.8).argParser(number('--temperature')))
      .addOption(new Option('--top-k <k>', 'sample among the k most likely tokens (0 = all)').default(0).argParser(integer('--top-k')))
      .addOption(seedOption('sampling seed').default(0))
      .addOption(new Option('--steer <file>', 'a steering file written by `moelab steer`: force / block those experts while sampling'))
      .addOption(
        new Option('--scmoe <beta>', 'SCMoE self-contrast decoding with weight beta against a weak routing (docs/compression.md#scmoe)').argParser(
          number('--scmoe'),
        ),
      )
      .addOption(
        new Option('--scmoe-rank <r>', "SCMoE's weak routing: the expert at this 0-based rank, weight 1").default(2).argParser(integer('--scmoe-rank')),
      )
      .addOption(new Option('--scmoe-alpha <a>', 'SCMoE plausibility: keep tokens with p >= a · max p').default(0.1).argParser(number('--scmoe-alpha')))
      .addOption(new Option('--no-cache', 'recompute the whole window for every new token instead of using the KV cache'))
      .addOption(backendOption()),
  async run([checkpoint], o) {
    await useBackend(o.backend, true);
    const { model, config } = loadCheckpoint(checkpoint, createDefaultRegistry(), { packed: true });
    const tok = loadCheckpointTokenizer(checkpoint, config); // bytes, or the checkpoint's tokenizer.json
    const ids = generateTokens(model, tok.encode(o.prompt), {
      maxNewTokens: o.tokens,
      temperature: o.temperature,
      topK: o.topK,
      seed: o.seed,
      cache: o.cache,
      ...(o.steer ? { routerLogitEdits: steerEdits(readSteerFile(o.steer)) } : {}),
      ...(o.scmoe !== undefined ? { contrast: scmoeContrast(model, { beta: o.scmoe, alpha: o.scmoeAlpha, weakRank: o.scmoeRank }) } : {}),
      onFallback: (reason) => process.stderr.write(`moelab generate: ${reason}\n`),
    });
    process.stdout.write(`${o.prompt}${tok.decode(ids)}\n`);
    return 0;
  },
});
