/** `moelab export`: write a checkpoint in another framework's layout (`--format`, one module per format in ../export-formats). */
import { Command, Option } from '@commander-js/extra-typings';
import { closeMatches, MoelabError } from '@moelab/core';
import { exportFormats } from '../export-formats/index.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';

export const exportCommand = defineCommand({
  define: () =>
    new Command('export')
      .summary('write a checkpoint in another layout (--format hf: Hugging Face transformers; onnx: an ONNX inference graph)')
      .description(
        `Write a moelab checkpoint in another framework's layout, atomically (a temporary directory or file renamed into place). Formats:\n${exportFormats.map((f) => `  ${f.name}: ${f.description}`).join('\n')}`,
      )
      .argument('<checkpoint>', 'checkpoint directory (runs/<name>/checkpoint)')
      .addOption(new Option('--format <name>', `output format (${exportFormats.map((f) => f.name).join(', ')})`).default('hf'))
      .addOption(new Option('--out <path>', 'output directory (hf) or .onnx file (onnx)').makeOptionMandatory())
      .addOption(
        new Option(
          '--arch <model_type>',
          'hf: target architecture (mixtral, qwen2_moe, qwen3_moe, olmoe, llama, qwen2; auto = the first that can hold the model)',
        ).default('auto'),
      )
      .addOption(new Option('--dtype <type>', 'hf: weight dtype on disk, f32 (exact) or bf16').default('f32'))
      .addOption(new Option('--max-shard-size <size>', 'hf: largest safetensors shard, e.g. 5GB, 500MB').default('5GB'))
      .addOption(
        new Option(
          '--onnx-dense-experts',
          'onnx: run every expert on every token, weighted by the gates: routed FFN experts, SwitchHead and MoA heads (default: sparse top-k dispatch)',
        ),
      )
      .addOption(
        new Option(
          '--onnx-external-data',
          'onnx: write the weights to <out>.data beside the .onnx file (ONNX external data; automatic above the 2 GiB protobuf limit)',
        ),
      ),
  run([checkpoint], o) {
    const format = exportFormats.find((f) => f.name === o.format);
    if (!format) {
      const close = closeMatches(
        o.format,
        exportFormats.map((f) => f.name),
      );
      throw new MoelabError(
        `unknown format "${o.format}"${close.length ? `. Did you mean: ${close.join(', ')}?` : ''} (formats: ${exportFormats.map((f) => f.name).join(', ')})`,
        '--format',
      );
    }
    for (const line of format.run(
      checkpoint,
      o.out,
      { arch: o.arch, dtype: o.dtype, maxShardSize: o.maxShardSize, denseExperts: o.onnxDenseExperts === true, externalData: o.onnxExternalData === true },
      createDefaultRegistry(),
    ))
      process.stdout.write(`${line}\n`);
    return 0;
  },
});
