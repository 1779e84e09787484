/**
 * The checkpoint format `moelab-checkpoint-v1`, without any file system: `config.json` (model spec,
 * tokenizer, step, seed, train config) and `model.safetensors`. The CLI (packages/node checkpoint.ts)
 * writes them to a directory; the playground downloads and uploads them as two files. Both go through
 * these functions, so a checkpoint from one loads in the other.
 */
import { buildModel, type LanguageModel } from './builder.js';
import { MoelabError } from './errors.js';
import type { Module } from './module.js';
import type { Registry } from './registry.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { Config, type NodeSpec, Type, validateConfig } from './schema.js';
import { loadState, stateTensors } from './state.js';
import { type TrainConfig, trainConfigSchema } from './train/trainer.js';

export const CHECKPOINT_FORMAT = 'moelab-checkpoint-v1';

/** The `train` section of config.json: the run's TrainConfig and the name of its data. */
export const checkpointTrainSchema = Config({
  ...trainConfigSchema.properties,
  data: Type.Optional(Type.String({ description: 'the corpus or file the run trained on' })),
});

export interface CheckpointConfig {
  format: typeof CHECKPOINT_FORMAT;
  spec: NodeSpec;
  /** `byte`: UTF-8 bytes are the tokens; `tokenizer.json`: a Hugging Face tokenizer stored beside config.json under that name. */
  tokenizer: CheckpointTokenizer;
  step: number;
  seed: number;
  train?: Partial<TrainConfig> & { data?: string };
  created: string;
}

/** Which tokenizer a checkpoint's token ids belong to. */
export type CheckpointTokenizer = 'byte' | 'tokenizer.json';

export interface CheckpointInfo {
  spec: NodeSpec;
  /** Default `byte`. */
  tokenizer?: CheckpointTokenizer;
  step: number;
  seed: number;
  train?: CheckpointConfig['train'];
}

export function makeCheckpointConfig(info: CheckpointInfo): CheckpointConfig {
  return {
    format: CHECKPOINT_FORMAT,
    spec: info.spec,
    tokenizer: info.tokenizer ?? 'byte',
    step: info.step,
    seed: info.seed,
    train: info.train,
    created: new Date().toISOString(),
  };
}

/** The text of `config.json`. */
export function checkpointConfigText(config: CheckpointConfig): string {
  return `${JSON.stringify(config, null, 2)}\n`;
}

/** The bytes of `model.safetensors`. */
export function checkpointWeights(model: Module, step: number): Uint8Array {
  return writeSafetensors(stateTensors(model), { format: CHECKPOINT_FORMAT, step: String(step) });
}

/** Both files of a checkpoint, in memory. */
export function encodeCheckpoint(model: Module, info: CheckpointInfo): { configJson: string; weights: Uint8Array; config: CheckpointConfig } {
  const config = makeCheckpointConfig(info);
  return { configJson: checkpointConfigText(config), weights: checkpointWeights(model, info.step), config };
}

/** Parse and check `config.json`. Never evaluates anything: JSON.parse plus shape checks. */
export function parseCheckpointConfig(text: string, where = 'config.json'): CheckpointConfig {
  let cfg: unknown;
  try {
    cfg = JSON.parse(text);
  } catch (e) {
    throw new MoelabError(`config.json is not valid JSON (${(e as Error).message})`, where);
  }
  if (!cfg || typeof cfg !== 'object' || Array.isArray(cfg)) throw new MoelabError('config.json must hold a JSON object', where);
  const c = cfg as Partial<CheckpointConfig>;
  if (c.format !== CHECKPOINT_FORMAT)
    throw new MoelabError(`unknown checkpoint format ${JSON.stringify(c.format)} (expected "${CHECKPOINT_FORMAT}")`, `${where}: $.format`);
  if (!c.spec) throw new MoelabError('config.json has no "spec" (the model spec)', `${where}: $.spec`);
  if (typeof c.spec !== 'string' && (typeof c.spec !== 'object' || Array.isArray(c.spec)))
    throw new MoelabError('"spec" must be a model node (an object with a "type" field)', `${where}: $.spec`);
  if (c.tokenizer !== undefined && c.tokenizer !== 'byte' && c.tokenizer !== 'tokenizer.json')
    throw new MoelabError(
      `unknown tokenizer ${JSON.stringify(c.tokenizer)} (expected "byte" or "tokenizer.json", a Hugging Face tokenizer stored beside config.json)`,
      `${where}: $.tokenizer`,
    );
  if (c.step !== undefined && (typeof c.step !== 'number' || !Number.isInteger(c.step) || c.step < 0))
    throw new MoelabError(`"step" must be a non-negative integer (got ${JSON.stringify(c.step)})`, `${where}: $.step`);
  if (c.seed !== undefined && (typeof c.seed !== 'number' || !Number.isFinite(c.seed)))
    throw new MoelabError(`"seed" must be a number (got ${JSON.stringify(c.seed)})`, `${where}: $.seed`);
  if (c.train !== undefined) {
    if (!c.train || typeof c.train !== 'object' || Array.isArray(c.train))
      throw new MoelabError(`"train" must be an object of training settings (got ${JSON.stringify(c.train)})`, `${where}: $.train`);
    validateConfig(checkpointTrainSchema, c.train, `${where}: $.train`);
  }
  return c as CheckpointConfig;
}

/** Build the model of a checkpoint and load its weights (strict: every tensor must match by name and shape). */
export function decodeCheckpoint<M extends Module & LanguageModel = Module & LanguageModel>(
  configText: string,
  weights: Uint8Array,
  registry: Registry,
  where: { config?: string; weights?: string } = {},
): { model: M; config: CheckpointConfig } {
  const config = parseCheckpointConfig(configText, where.config);
  const file = readSafetensors(weights, where.weights ?? 'model.safetensors');
  const model = buildModel<M>(config.spec, registry, config.seed ?? 0);
  try {
    loadState(model, file.tensors, { source: where.weights ?? 'model.safetensors' });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, config };
}
