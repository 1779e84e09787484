/**
 * Checkpoints: a directory with `config.json` (model spec, tokenizer, step, train config) and
 * `model.safetensors`, plus `optimizer.safetensors` when training state is saved. The same format is
 * read and written by the playground (in the browser, as two downloads).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  buildModel,
  type LanguageModel,
  loadState,
  MoelabError,
  type Module,
  type NodeSpec,
  readSafetensors,
  type Registry,
  stateTensors,
  type Trainer,
  type TrainConfig,
  writeSafetensors,
} from '@moelab/core';
import { writeDirAtomic } from './fsutil.js';

export const CHECKPOINT_FORMAT = 'moelab-checkpoint-v1';

export interface CheckpointConfig {
  format: typeof CHECKPOINT_FORMAT;
  spec: NodeSpec;
  tokenizer: 'byte';
  step: number;
  seed: number;
  train?: Partial<TrainConfig> & { data?: string };
  created: string;
}

export type Model = Module & LanguageModel;

export function saveCheckpoint(
  dir: string,
  model: Model,
  info: { spec: NodeSpec; step: number; seed: number; train?: CheckpointConfig['train']; trainer?: Trainer },
): void {
  const config: CheckpointConfig = {
    format: CHECKPOINT_FORMAT,
    spec: info.spec,
    tokenizer: 'byte',
    step: info.step,
    seed: info.seed,
    train: info.train,
    created: new Date().toISOString(),
  };
  const weights = writeSafetensors(stateTensors(model), { format: CHECKPOINT_FORMAT, step: String(info.step) });
  const optim = info.trainer ? writeSafetensors(info.trainer.optimizer.stateTensors(), { step: String(info.step) }) : undefined;
  writeDirAtomic(dir, (tmp) => {
    writeFileSync(join(tmp, 'model.safetensors'), weights);
    if (optim) writeFileSync(join(tmp, 'optimizer.safetensors'), optim);
    writeFileSync(join(tmp, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  });
}

export function readCheckpointConfig(dir: string): CheckpointConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new MoelabError('not a moelab checkpoint: config.json is missing', dir);
  let cfg: CheckpointConfig;
  try {
    cfg = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new MoelabError(`config.json is not valid JSON (${(e as Error).message})`, path);
  }
  if (cfg.format !== CHECKPOINT_FORMAT)
    throw new MoelabError(`unknown checkpoint format ${JSON.stringify(cfg.format)} (expected "${CHECKPOINT_FORMAT}")`, `${path}: $.format`);
  if (!cfg.spec) throw new MoelabError('config.json has no "spec" (the model spec)', `${path}: $.spec`);
  return cfg;
}

export function loadCheckpoint(dir: string, registry: Registry): { model: Model; config: CheckpointConfig } {
  const config = readCheckpointConfig(dir);
  const model = buildModel<Model>(config.spec, registry, config.seed ?? 0);
  const wpath = join(dir, 'model.safetensors');
  if (!existsSync(wpath)) throw new MoelabError('model.safetensors is missing', dir);
  const file = readSafetensors(new Uint8Array(readFileSync(wpath)), wpath);
  loadState(model, file.tensors, { source: wpath });
  return { model, config };
}

/** Restore the optimiser state of a checkpoint into a trainer (exact resume). */
export function loadOptimizerState(dir: string, trainer: Trainer): void {
  const p = join(dir, 'optimizer.safetensors');
  if (!existsSync(p)) throw new MoelabError('optimizer.safetensors is missing: this checkpoint cannot be resumed exactly', dir);
  trainer.optimizer.loadState(readSafetensors(new Uint8Array(readFileSync(p)), p).tensors, p);
}
