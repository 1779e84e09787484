/**
 * Checkpoints: a directory with `config.json` (model spec, tokenizer, step, train config) and
 * `model.safetensors`, plus `optimizer.safetensors` when training state is saved. The same format is
 * read and written by the playground (in the browser, as two downloads).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  buildModel,
  ByteTokenizer,
  CHECKPOINT_FORMAT,
  type CheckpointConfig,
  checkpointConfigText,
  checkpointWeights,
  type LanguageModel,
  loadState,
  MoelabError,
  makeCheckpointConfig,
  type Module,
  type NodeSpec,
  parseCheckpointConfig,
  readSafetensors,
  type Registry,
  type Tokenizer,
  type Trainer,
  writeSafetensors,
} from '@moelab/core';
import { HfTokenizer, parseHfTokenizer } from '@moelab/interop';
import { isQuantized, loadQuantizedState } from '@moelab/compress';
import { writeDirAtomic } from './fsutil.js';

// The format itself (config.json fields, weights metadata, checks) lives in core: the playground shares it.
export { CHECKPOINT_FORMAT, type CheckpointConfig };

export type Model = Module & LanguageModel;

export function saveCheckpoint(
  dir: string,
  model: Model,
  info: { spec: NodeSpec; step: number; seed: number; train?: CheckpointConfig['train']; trainer?: Trainer; tokenizer?: Tokenizer },
): void {
  // A Hugging Face tokenizer travels with the checkpoint as tokenizer.json; the byte tokenizer needs no file.
  const hfTokenizer = info.tokenizer instanceof HfTokenizer ? info.tokenizer : undefined;
  const config = makeCheckpointConfig({ ...info, tokenizer: hfTokenizer ? 'tokenizer.json' : 'byte' });
  const weights = checkpointWeights(model, info.step);
  const optim = info.trainer ? writeSafetensors(info.trainer.optimizer.stateTensors(), { step: String(info.step) }) : undefined;
  writeDirAtomic(dir, (tmp) => {
    writeFileSync(join(tmp, 'model.safetensors'), weights);
    if (optim) writeFileSync(join(tmp, 'optimizer.safetensors'), optim);
    if (hfTokenizer) writeFileSync(join(tmp, 'tokenizer.json'), hfTokenizer.json);
    writeFileSync(join(tmp, 'config.json'), checkpointConfigText(config));
  });
}

/** A Hugging Face tokenizer.json from disk (one-line errors naming the file when it is missing or bad). */
export function readTokenizerFile(path: string): HfTokenizer {
  if (!existsSync(path)) throw new MoelabError('file is missing', path);
  return parseHfTokenizer(readFileSync(path, 'utf8'), path);
}

/** The tokenizer of a checkpoint: the byte tokenizer, or its tokenizer.json (a one-line error when that file is missing or bad). */
export function loadCheckpointTokenizer(dir: string, config: CheckpointConfig = readCheckpointConfig(dir)): Tokenizer {
  if ((config.tokenizer ?? 'byte') === 'byte') return new ByteTokenizer();
  const path = join(dir, 'tokenizer.json');
  if (!existsSync(path)) throw new MoelabError('config.json names tokenizer "tokenizer.json" but the file is missing', path);
  return readTokenizerFile(path);
}

export function readCheckpointConfig(dir: string): CheckpointConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new MoelabError('not a moelab checkpoint: config.json is missing', dir);
  return parseCheckpointConfig(readFileSync(path, 'utf8'), path);
}

/**
 * Build a checkpoint's model and load its weights. A quantized checkpoint (`moelab quantize`)
 * loads dequantized to float, or with `packed` (for inference) its expert banks stay packed where
 * the backend has the packed expert kernel (moelab-cpu); docs/compression.md#quantization.
 */
export function loadCheckpoint(dir: string, registry: Registry, opts: { packed?: boolean } = {}): { model: Model; config: CheckpointConfig } {
  const config = readCheckpointConfig(dir);
  const wpath = join(dir, 'model.safetensors');
  if (!existsSync(wpath)) throw new MoelabError('model.safetensors is missing', dir);
  const file = readSafetensors(new Uint8Array(readFileSync(wpath)), wpath);
  const model = buildModel<Model>(config.spec, registry, config.seed ?? 0);
  try {
    if (isQuantized(file)) loadQuantizedState(model, file, { packed: opts.packed ? undefined : false, source: wpath });
    else loadState(model, file.tensors, { source: wpath });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, config };
}

/** Whether a checkpoint holds optimiser state (moelab training writes it; `moelab import` and the playground's model download do not). */
export function hasOptimizerState(dir: string): boolean {
  return existsSync(join(dir, 'optimizer.safetensors'));
}

/** Restore the optimiser state of a checkpoint into a trainer (exact resume). */
export function loadOptimizerState(dir: string, trainer: Trainer): void {
  const p = join(dir, 'optimizer.safetensors');
  if (!existsSync(p)) throw new MoelabError('optimizer.safetensors is missing: this checkpoint cannot be resumed exactly', dir);
  trainer.optimizer.loadState(readSafetensors(new Uint8Array(readFileSync(p)), p).tensors, p);
}
