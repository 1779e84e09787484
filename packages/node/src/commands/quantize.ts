/**
 * `moelab quantize`: weight-only quantization of a checkpoint (MoQE, arXiv 2310.02410): the routed
 * experts by default, any parameters by glob with --targets; writes a checkpoint every command
 * loads (packed on moelab-cpu, dequantized elsewhere). docs/compression.md#quantization.
 * --qat-steps N first runs N steps of quantization-aware training (straight-through estimator) on --data.
 */
import { copyFileSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { QUANT_BITS, QUANT_SCHEMES, type QuantScheme, quantizationAwareTraining, quantizedSize, quantizedTensors, quantizeModel } from '@moelab/compress';
import { checkpointConfigText, MoelabError, type PackedBits, writeSafetensors } from '@moelab/core';
import { textSet, textWindows } from '../calibration.js';
import { loadCheckpoint } from '../checkpoint.js';
import { writeDirAtomic } from '../fsutil.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { batchOption, integer, jsonOption, list, number, seqOption, useBackend } from './options.js';

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 3 : 2)} MiB`;

export const quantize = defineCommand({
  define: () =>
    new Command('quantize')
      .summary('weight-only quantization of a checkpoint (experts by default): --bits 8|4|3|2 --out DIR')
      .description(
        'Quantize the weights of a checkpoint to 8, 4, 3 or 2 bits with one scale per output channel (or per ' +
          '--group input rows) and write a quantized checkpoint. Only the routed experts by default (MoQE); ' +
          '--targets takes comma-separated globs over parameter paths (* within a path segment, ** across) to ' +
          'quantize anything else, e.g. "**" for every matrix. moelab-cpu runs the expert banks packed.',
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .requiredOption('--out <dir>', 'where to write the quantized checkpoint')
      .addOption(new Option('--bits <n>', `code width: ${QUANT_BITS.join(', ')}`).argParser(integer('--bits')).default(4))
      .addOption(new Option('--group <n>', 'input rows per scale group (0 = one scale per output channel)').argParser(integer('--group')).default(0))
      .addOption(new Option('--scheme <name>', 'symmetric (absmax) or asymmetric (min/max with a zero point)').choices(QUANT_SCHEMES).default('symmetric'))
      .addOption(new Option('--targets <globs>', 'comma-separated globs over parameter paths (default: the routed experts)').argParser(list))
      .addOption(
        new Option('--qat-steps <n>', 'quantization-aware training steps before packing (straight-through estimator; 0 = none)')
          .argParser(integer('--qat-steps'))
          .default(0),
      )
      .addOption(new Option('--data <set>', 'QAT text: brown, sotu, a path, or corpus:domain (train split)'))
      .addOption(new Option('--qat-lr <x>', 'QAT Adam learning rate').argParser(number('--qat-lr')).default(1e-3))
      .addOption(seqOption("QAT sequence length (default: the checkpoint's, at most its context length)"))
      .addOption(batchOption().default(8))
      .addOption(jsonOption()),
  async run([checkpoint], o) {
    // Quantizing is host-side arithmetic: the plain cpu backend is enough and always there.
    await useBackend('cpu', true);
    if (!(QUANT_BITS as readonly number[]).includes(o.bits)) throw new MoelabError(`--bits must be one of ${QUANT_BITS.join(', ')} (got ${o.bits})`);
    if (o.group < 0) throw new MoelabError(`--group must be 0 (per channel) or a positive number of rows (got ${o.group})`);
    if (o.qatSteps < 0) throw new MoelabError(`--qat-steps must be 0 or a positive integer (got ${o.qatSteps})`, '--qat-steps');
    if (o.qatSteps > 0 && !o.data) throw new MoelabError('--qat-steps needs the text to train on: --data brown|sotu|PATH|corpus:domain', '--data');
    const { model, config } = loadCheckpoint(checkpoint, createDefaultRegistry());
    let qat: { steps: number; firstLoss: number; lastLoss: number } | undefined;
    if (o.qatSteps > 0) {
      const seqLen = o.seq ?? Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
      const windows = textWindows(textSet(o.data!, '--data'), { split: 'train', seqLen, maxTokens: o.qatSteps * o.batch * seqLen }, '--data');
      const r = quantizationAwareTraining(model, windows, {
        bits: o.bits as PackedBits,
        group: o.group,
        scheme: o.scheme as QuantScheme,
        targets: o.targets,
        steps: o.qatSteps,
        lr: o.qatLr,
        batchSize: o.batch,
      });
      qat = { steps: o.qatSteps, firstLoss: r.losses[0]!, lastLoss: r.losses.at(-1)! };
    }
    const q = quantizeModel(model, { bits: o.bits as PackedBits, group: o.group, scheme: o.scheme as QuantScheme, targets: o.targets });
    model.dispose();
    const { tensors, metadata } = quantizedTensors(q);
    const weights = writeSafetensors(tensors, { ...metadata, format: config.format, step: String(config.step) });
    writeDirAtomic(o.out, (tmp) => {
      writeFileSync(join(tmp, 'model.safetensors'), weights);
      writeFileSync(join(tmp, 'config.json'), checkpointConfigText(config));
      // A checkpoint trained with its own tokenizer keeps it.
      if (existsSync(join(checkpoint, 'tokenizer.json'))) copyFileSync(join(checkpoint, 'tokenizer.json'), join(tmp, 'tokenizer.json'));
    });
    const size = quantizedSize(q.packed);
    const before = statSync(join(checkpoint, 'model.safetensors')).size;
    const report = {
      out: o.out,
      bits: q.options.bits,
      group: q.options.group,
      scheme: q.options.scheme,
      tensors: [...q.packed.keys()],
      quantizedFloatBytes: size.floatBytes,
      quantizedPackedBytes: size.packedBytes,
      checkpointBytesBefore: before,
      checkpointBytesAfter: weights.byteLength,
      ...(qat ? { qat } : {}),
    };
    if (o.json) {
      process.stdout.write(`${JSON.stringify(report)}\n`);
      return 0;
    }
    const scales = q.options.group ? `scales per ${q.options.group} input rows` : 'one scale per output channel';
    if (qat)
      process.stdout.write(
        `quantization-aware training: ${qat.steps} steps on ${o.data}, training loss at the quantized weights ${qat.firstLoss.toFixed(4)} -> ${qat.lastLoss.toFixed(4)}\n`,
      );
    process.stdout.write(
      `quantized ${q.packed.size} tensors to ${q.options.bits} bits (${q.options.scheme}, ${scales}): ` +
        `${mib(size.floatBytes)} float32 -> ${mib(size.packedBytes)} packed (${(size.floatBytes / size.packedBytes).toFixed(2)}x smaller)\n` +
        `model.safetensors: ${mib(before)} -> ${mib(weights.byteLength)}; wrote ${o.out}\n`,
    );
    return 0;
  },
});
