/** `moelab export --format hf`: a Hugging Face transformers directory (docs/interop.md). */
import { MoelabError } from '@moelab/core';
import { HF_ARCHITECTURES } from '@moelab/interop';
import { exportHfCheckpoint, parseSize } from '../hf-files.js';
import type { ExportFormat } from './format.js';

export const hfFormat: ExportFormat = {
  name: 'hf',
  description: `Hugging Face transformers layout (${HF_ARCHITECTURES.map((a) => a.modelType).join(', ')}): config.json, safetensors shards, tokenizer.json`,
  run(checkpoint, out, flags, registry) {
    const dtype = (flags.dtype ?? 'f32').toLowerCase();
    if (dtype !== 'f32' && dtype !== 'bf16') throw new MoelabError(`"${flags.dtype}" is not a weight dtype for hf (f32 or bf16)`, '--dtype');
    const { plan, files } = exportHfCheckpoint(checkpoint, out, {
      registry,
      arch: flags.arch === 'auto' ? undefined : flags.arch,
      dtype: dtype === 'bf16' ? 'BF16' : 'F32',
      maxShardBytes: flags.maxShardSize ? parseSize(flags.maxShardSize) : undefined,
    });
    const shards = files.filter((f) => f.endsWith('.safetensors')).length;
    return [
      ...plan.notes.map((n) => `note: ${n}`),
      `exported ${checkpoint} as ${plan.arch.modelType} (${plan.arch.className}) to ${out}: ${plan.outputs.length} tensors in ${shards} safetensors file${shards === 1 ? '' : 's'}, ${dtype}`,
    ];
  },
};
