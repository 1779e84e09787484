/** `moelab import`: a Hugging Face transformers directory -> a moelab checkpoint (docs/interop.md). */
import { Command, Option } from '@commander-js/extra-typings';
import { importHfCheckpoint } from '../hf-files.js';
import { defineCommand } from './command.js';

export const importCommand = defineCommand({
  define: () =>
    new Command('import')
      .summary('a Hugging Face model directory -> a moelab checkpoint (mixtral, qwen2_moe, qwen3_moe, olmoe, llama, qwen2)')
      .description(
        'Read a Hugging Face transformers directory (config.json, model.safetensors or its shards with model.safetensors.index.json, f32 / bf16 / f16, optional tokenizer.json) and write a moelab checkpoint, one tensor group at a time, atomically.',
      )
      .argument('<dir>', 'Hugging Face model directory')
      .addOption(new Option('--out <checkpoint>', 'checkpoint directory to write').makeOptionMandatory()),
  run([dir], o) {
    const { plan, tokenizer } = importHfCheckpoint(dir, o.out);
    const tok = tokenizer === null ? 'no tokenizer.json: byte tokenizer' : tokenizer === 'byte' ? 'byte tokenizer' : 'tokenizer.json';
    const { ropeScaling, slidingWindow } = plan.shape;
    const extras = [
      ropeScaling ? `${ropeScaling.type} RoPE scaling ×${ropeScaling.factor}` : '',
      slidingWindow !== undefined ? `sliding window ${slidingWindow}` : '',
    ].filter(Boolean);
    process.stdout.write(
      `imported ${plan.arch.modelType} from ${dir} to ${o.out}: ${plan.outputs.length} tensors, ${plan.shape.layers} layers, ${[tok, ...extras].join(', ')}\n`,
    );
    return 0;
  },
});
