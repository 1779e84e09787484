/** `moelab eval`: validation loss, perplexity and bits per byte of a checkpoint, optionally with experts masked or an adapter attached. */
import { Command, Option } from '@commander-js/extra-typings';
import { steerEdits } from '@moelab/compress';
import { Trainer } from '@moelab/core';
import { readSteerFile } from '../calibration.js';
import { loadAdapterCheckpoint } from '../adapter-checkpoint.js';
import { loadCheckpoint, loadCheckpointTokenizer } from '../checkpoint.js';
import { domainTokens } from '../finetune-run.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { backendOption, batchOption, checkpointDataOption, evalBatchesOption, jsonOption, seqOption, useBackend } from './options.js';

export const evaluate = defineCommand({
  define: () =>
    new Command('eval')
      .summary('validation loss and perplexity of a checkpoint (--mask mask.json: experts masked; --steer steer.json: steered; --adapter DIR: fine-tuned)')
      .description('Validation loss, perplexity and bits per byte of a checkpoint on the validation split of --data.')
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(checkpointDataOption())
      .addOption(seqOption("sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(16))
      .addOption(evalBatchesOption().default(16))
      .addOption(new Option('--mask <file>', 'an expert mask written by `moelab mask`: evaluate with those experts disabled'))
      .addOption(new Option('--steer <file>', 'a steering file written by `moelab steer`: evaluate with those experts forced / blocked'))
      .addOption(new Option('--adapter <dir>', 'an adapter written by `moelab finetune` for this base: evaluate the fine-tuned model'))
      .addOption(new Option('--domain <prefix>', 'keep only documents of this domain of --data (e.g. 1946-2021)'))
      .addOption(jsonOption())
      .addOption(backendOption()),
  async run([checkpoint], o) {
    await useBackend(o.backend, o.json);
    const registry = createDefaultRegistry();
    const { model, config } = loadCheckpoint(checkpoint, registry, { packed: !o.adapter });
    const tokenizer = loadCheckpointTokenizer(checkpoint, config);
    const adapterTrain = o.adapter ? loadAdapterCheckpoint(o.adapter, model, registry).config.train : undefined;
    const data = domainTokens(o.data ?? adapterTrain?.data ?? config.train?.data ?? 'brown', o.domain ?? (o.data ? undefined : adapterTrain?.domain), {
      tokenizer,
    });
    const unit = tokenizer.name === 'byte' ? 'byte' : 'token';
    const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    if (o.mask || o.steer) {
      const { evaluateWithMask, maskedCount, maskOf, readMaskFile } = await import('../specialise.js');
      const file = o.mask ? readMaskFile(o.mask) : undefined;
      const steering = o.steer ? readSteerFile(o.steer) : undefined;
      const ev = evaluateWithMask(model, data, {
        seed: config.seed ?? 0,
        seqLen,
        batchSize: o.batch,
        batches: o.evalBatches,
        mask: file ? maskOf(file) : undefined,
        edits: steering ? steerEdits(steering) : undefined,
      });
      const masked = file ? { file: o.mask, domain: file.domain, experts: maskedCount(file), layers: Object.keys(file.layers).length } : undefined;
      const steered = steering
        ? {
            file: o.steer,
            toward: steering.toward,
            away: steering.away,
            forced: Object.values(steering.layers).reduce((a, l) => a + l.force.length, 0),
            blocked: Object.values(steering.layers).reduce((a, l) => a + l.block.length, 0),
          }
        : undefined;
      if (o.json) process.stdout.write(`${JSON.stringify({ ...ev, step: config.step, ...(masked ? { masked } : {}), ...(steered ? { steered } : {}) })}\n`);
      else {
        const notes = [
          masked ? `${masked.experts} experts masked in ${masked.layers} layers, domain "${masked.domain}"` : '',
          steered ? `steered toward "${steered.toward}" away from "${steered.away}": ${steered.forced} forced, ${steered.blocked} blocked` : '',
        ].filter(Boolean);
        process.stdout.write(
          `step ${config.step}: val loss ${ev.loss.toFixed(4)}, perplexity ${ev.perplexity.toFixed(3)}, ${ev.bitsPerToken.toFixed(3)} bits/${unit} (${notes.join('; ')})\n`,
        );
      }
      return 0;
    }
    const ev = new Trainer(model, data, { seqLen, batchSize: o.batch, seed: config.seed, evalBatches: o.evalBatches }).evaluate();
    if (o.json) process.stdout.write(`${JSON.stringify({ ...ev, step: config.step })}\n`);
    else
      process.stdout.write(
        `step ${config.step}: val loss ${ev.loss.toFixed(4)}, perplexity ${ev.perplexity.toFixed(3)}, ${ev.bitsPerToken.toFixed(3)} bits/${unit}\n`,
      );
    return 0;
  },
});
