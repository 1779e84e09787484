/**
 * Presets: named, ready-to-train model specs (registry kind `preset`), discoverable like every other
 * entry (`moelab list preset`). A preset's factory returns its spec and a suggested training config.
 */
import type { NodeSpec } from './schema.js';
import { Config } from './schema.js';
import { defineEntry } from './registry.js';
import type { TrainConfig } from './train/trainer.js';

export interface Preset {
  spec: NodeSpec;
  train: Partial<TrainConfig>;
}

export function definePreset(name: string, description: string, spec: NodeSpec, train: Partial<TrainConfig> = {}) {
  return defineEntry({
    kind: 'preset',
    name,
    description,
    schema: Config({}),
    create: (): Preset => ({ spec: structuredClone(spec), train: { ...train } }),
  });
}
