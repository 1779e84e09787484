/**
 * Checkpoints in the browser: the CLI's `moelab-checkpoint-v1` format (config.json + model.safetensors),
 * encoded and decoded by core's checkpoint-format functions, so files move both ways between the
 * playground and `moelab`. Uploaded files are only parsed (JSON.parse, the safetensors header), never run.
 */
import { isQuantized, loadQuantizedState } from '@moelab/compress';
import {
  buildModel,
  type CheckpointConfig,
  type CheckpointInfo,
  decodeCheckpoint,
  encodeCheckpoint,
  type LanguageModel,
  MoelabError,
  type Module,
  parseCheckpointConfig,
  type Registry,
  readSafetensors,
} from '@moelab/core';

export interface UploadedFile {
  name: string;
  bytes: Uint8Array;
}

export interface CheckpointFiles {
  configJson: string;
  weights: Uint8Array;
}

/** config.json and model.safetensors of a model, as the CLI writes them. */
export function checkpointFiles(model: Module, info: CheckpointInfo): CheckpointFiles & { config: CheckpointConfig } {
  return encodeCheckpoint(model, info);
}

const MAX_CONFIG_BYTES = 4 << 20;

function looksLikeSafetensors(bytes: Uint8Array): boolean {
  if (bytes.length < 10) return false;
  // 8-byte little-endian header length, then a JSON header starting with '{'.
  return bytes[8] === 0x7b;
}

/**
 * Pick config.json and model.safetensors out of the files a person chose (by name, else by content),
 * or explain what is wrong.
 */
export function pickCheckpointFiles(files: UploadedFile[]): { config: UploadedFile; weights: UploadedFile } {
  if (files.length === 0) throw new MoelabError('choose two files: config.json and model.safetensors');
  let config = files.find((f) => f.name.toLowerCase().endsWith('.json'));
  let weights = files.find((f) => f.name.toLowerCase().endsWith('.safetensors'));
  for (const f of files) {
    if (!weights && f !== config && looksLikeSafetensors(f.bytes)) weights = f;
    if (!config && f !== weights && f.bytes[0] === 0x7b) config = f;
  }
  if (!config) throw new MoelabError(`config.json is missing (got ${files.map((f) => f.name).join(', ')}); choose both files of the checkpoint`);
  if (!weights) throw new MoelabError(`model.safetensors is missing (got ${files.map((f) => f.name).join(', ')}); choose both files of the checkpoint`);
  if (config.bytes.length > MAX_CONFIG_BYTES)
    throw new MoelabError(`config.json is ${config.bytes.length} bytes: too large for a checkpoint config`, config.name);
  return { config, weights };
}

/**
 * An ordinary checkpoint through core's decoder; a quantized one (`moelab quantize`, the Compress
 * section) is built from its config and its codes dequantized to float weights at load.
 */
function decodeWeights<M extends Module & LanguageModel>(
  text: string,
  weights: UploadedFile,
  registry: Registry,
  configName: string,
): { model: M; config: CheckpointConfig } {
  const file = readSafetensors(weights.bytes, weights.name);
  if (!isQuantized(file)) return decodeCheckpoint<M>(text, weights.bytes, registry, { config: configName, weights: weights.name });
  const config = parseCheckpointConfig(text, configName);
  const model = buildModel<M>(config.spec, registry, config.seed ?? 0);
  try {
    loadQuantizedState(model, file, { packed: false, source: weights.name });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, config };
}

/** Decode uploaded checkpoint files into a model (strict weight loading; quantized weights are dequantized). */
export function loadCheckpointFiles<M extends Module & LanguageModel>(files: UploadedFile[], registry: Registry): { model: M; config: CheckpointConfig } {
  const { config, weights } = pickCheckpointFiles(files);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(config.bytes);
  } catch {
    throw new MoelabError('config.json is not UTF-8 text', config.name);
  }
  const loaded = decodeWeights<M>(text, weights, registry, config.name);
  if ((loaded.config.tokenizer ?? 'byte') !== 'byte') {
    loaded.model.dispose();
    throw new MoelabError(
      'this checkpoint tokenizes with a Hugging Face tokenizer.json; the playground reads and writes bytes only (use the moelab CLI: eval, generate)',
      `${config.name}: $.tokenizer`,
    );
  }
  return loaded;
}
