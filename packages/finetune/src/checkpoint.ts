/**
 * Adapter checkpoints (`moelab-adapter-v1`, docs/finetune.md#adapter-checkpoints), without any file system:
 * `adapter.json` — the adapter nodes with their defaults filled in, the seed they were initialised with,
 * the training config, the parameter counts and the base model's content hash — and `adapter.safetensors`
 * with the adapter tensors only (named `<site key>.<tensor>`, e.g.
 * `transformer.layers.0.ffn.lora_A`; an expert-select adapter stores its trained slices). No base tensor
 * is written. Loading rebuilds the adapters on a base and refuses, in one line, a base whose hash differs.
 */
import { MoelabError, type NodeSpec, readSafetensors, type Registry, type TensorToWrite, type TrainConfig, writeSafetensors } from '@moelab/core';
import { AdaptedModel, type Model, type ParameterCounts } from './adapted-model.js';
import { baseContentHash } from './hash.js';

export const ADAPTER_FORMAT = 'moelab-adapter-v1';

export interface AdapterCheckpointConfig {
  format: typeof ADAPTER_FORMAT;
  /** The base these adapters were trained on: its content hash (hash.ts) and, informally, where it came from. */
  base: { hash: string; source?: string };
  /** The fine-tuning method's name, when a method table entry made the nodes (`perft-r`, ...). */
  method?: string;
  adapters: NodeSpec[];
  seed: number;
  step: number;
  train?: Partial<TrainConfig> & { data?: string; domain?: string };
  counts: ParameterCounts;
  created: string;
}

export interface AdapterCheckpointInfo {
  method?: string;
  step: number;
  train?: AdapterCheckpointConfig['train'];
  seed: number;
  source?: string;
}

/** The adapter tensors of an adapted model, by checkpoint name. */
export function adapterTensors(adapted: AdaptedModel): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  for (const a of adapted.adapters) {
    const { key } = adapted.siteOf(a);
    for (const [name, t] of a.checkpointTensors()) out.set(`${key}.${name}`, t);
  }
  return out;
}

/** Both files of an adapter checkpoint, in memory. */
export function encodeAdapterCheckpoint(
  adapted: AdaptedModel,
  info: AdapterCheckpointInfo,
): { configJson: string; weights: Uint8Array; config: AdapterCheckpointConfig } {
  const config: AdapterCheckpointConfig = {
    format: ADAPTER_FORMAT,
    base: { hash: adapted.baseHash, ...(info.source ? { source: info.source } : {}) },
    ...(info.method ? { method: info.method } : {}),
    adapters: adapted.attached.map((a) => a.node),
    seed: info.seed,
    step: info.step,
    ...(info.train ? { train: info.train } : {}),
    counts: adapted.counts(),
    created: new Date().toISOString(),
  };
  const weights = writeSafetensors(adapterTensors(adapted), { format: ADAPTER_FORMAT, base: adapted.baseHash });
  return { configJson: `${JSON.stringify(config, null, 2)}\n`, weights, config };
}

/** Parse and check `adapter.json` (JSON.parse plus shape checks). */
export function parseAdapterConfig(text: string, where = 'adapter.json'): AdapterCheckpointConfig {
  let c: Partial<AdapterCheckpointConfig>;
  try {
    c = JSON.parse(text);
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, where);
  }
  if (!c || typeof c !== 'object' || Array.isArray(c)) throw new MoelabError('adapter.json must hold a JSON object', where);
  if (c.format !== ADAPTER_FORMAT)
    throw new MoelabError(`unknown adapter format ${JSON.stringify(c.format)} (expected "${ADAPTER_FORMAT}")`, `${where}: $.format`);
  if (!c.base || typeof c.base.hash !== 'string') throw new MoelabError('"base.hash" (the base model\'s content hash) is missing', `${where}: $.base.hash`);
  if (!Array.isArray(c.adapters) || c.adapters.length === 0)
    throw new MoelabError('"adapters" must be a non-empty list of adapter nodes', `${where}: $.adapters`);
  if (typeof c.seed !== 'number') throw new MoelabError('"seed" must be a number', `${where}: $.seed`);
  return c as AdapterCheckpointConfig;
}

/**
 * Attach a saved adapter to `model` (the base): checks the base's content hash, rebuilds the adapters from
 * their nodes and seed, and loads their tensors strictly (every name and shape must match). On error
 * the model is left as it was.
 */
export function decodeAdapterCheckpoint(
  model: Model,
  configText: string,
  weights: Uint8Array,
  registry: Registry,
  where: { config?: string; weights?: string } = {},
): { adapted: AdaptedModel; config: AdapterCheckpointConfig } {
  const config = parseAdapterConfig(configText, where.config);
  const hash = baseContentHash(model);
  if (hash !== config.base.hash)
    throw new MoelabError(
      `this adapter was trained on the base ${config.base.hash.slice(0, 19)}…, but the model given is ${hash.slice(0, 19)}… (a different base or different weights)`,
      where.config ?? 'adapter.json',
    );
  const source = where.weights ?? 'adapter.safetensors';
  const file = readSafetensors(weights, source);
  const adapted = new AdaptedModel(model, config.adapters, registry, { seed: config.seed });
  try {
    const expected = new Map<string, number[]>();
    for (const a of adapted.adapters) for (const [name, shape] of a.checkpointShapes()) expected.set(`${adapted.siteOf(a).key}.${name}`, shape);
    const missing = [...expected.keys()].filter((n) => !file.tensors.has(n));
    const unexpected = [...file.tensors.keys()].filter((n) => !expected.has(n));
    const wrong = [...expected].filter(([n, s]) => file.tensors.has(n) && file.tensors.get(n)!.shape.join(',') !== s.join(','));
    if (missing.length || unexpected.length || wrong.length) {
      const parts = [
        missing.length ? `missing: ${missing.join(', ')}` : '',
        unexpected.length ? `unexpected: ${unexpected.join(', ')}` : '',
        wrong.length ? `wrong shape: ${wrong.map(([n, s]) => `${n} (adapter [${s}], file [${file.tensors.get(n)!.shape}])`).join(', ')}` : '',
      ].filter(Boolean);
      throw new MoelabError(`tensors do not match the adapters — ${parts.join('; ')}`, source);
    }
    for (const a of adapted.adapters) {
      const key = adapted.siteOf(a).key;
      const mine = new Map<string, { shape: number[]; data: Float32Array }>();
      for (const name of a.checkpointShapes().keys()) {
        const t = file.tensors.get(`${key}.${name}`)!;
        mine.set(name, { shape: t.shape, data: t.data instanceof Float32Array ? t.data : Float32Array.from(t.data as ArrayLike<number>) });
      }
      a.loadCheckpointTensors(mine);
    }
  } catch (e) {
    adapted.detach();
    throw e;
  }
  return { adapted, config };
}
