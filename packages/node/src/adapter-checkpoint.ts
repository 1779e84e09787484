/**
 * Adapter checkpoints on disk (docs/finetune.md#adapter-checkpoints): a directory with `adapter.json` and
 * `adapter.safetensors`, written atomically; the format lives in @moelab/finetune (the playground shares it).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MoelabError, type Registry } from '@moelab/core';
import {
  type AdaptedModel,
  type AdapterCheckpointConfig,
  type AdapterCheckpointInfo,
  decodeAdapterCheckpoint,
  encodeAdapterCheckpoint,
  parseAdapterConfig,
} from '@moelab/finetune';
import type { Model } from './checkpoint.js';
import { writeDirAtomic } from './fsutil.js';

export function saveAdapterCheckpoint(dir: string, adapted: AdaptedModel, info: AdapterCheckpointInfo): AdapterCheckpointConfig {
  const { configJson, weights, config } = encodeAdapterCheckpoint(adapted, info);
  writeDirAtomic(dir, (tmp) => {
    writeFileSync(join(tmp, 'adapter.safetensors'), weights);
    writeFileSync(join(tmp, 'adapter.json'), configJson);
  });
  return config;
}

export function readAdapterConfig(dir: string): AdapterCheckpointConfig {
  const path = join(dir, 'adapter.json');
  if (!existsSync(path)) throw new MoelabError('not a moelab adapter: adapter.json is missing', dir);
  return parseAdapterConfig(readFileSync(path, 'utf8'), path);
}

/** Attach the adapter saved in `dir` to `model` (its base; the content hash is checked). */
export function loadAdapterCheckpoint(dir: string, model: Model, registry: Registry): { adapted: AdaptedModel; config: AdapterCheckpointConfig } {
  const cpath = join(dir, 'adapter.json');
  const wpath = join(dir, 'adapter.safetensors');
  if (!existsSync(cpath)) throw new MoelabError('not a moelab adapter: adapter.json is missing', dir);
  if (!existsSync(wpath)) throw new MoelabError('adapter.safetensors is missing', dir);
  return decodeAdapterCheckpoint(model, readFileSync(cpath, 'utf8'), new Uint8Array(readFileSync(wpath)), registry, { config: cpath, weights: wpath });
}
