/**
 * Presets: named, ready-to-train model specs with a suggested training config. They live in their own
 * typed table of the registry (not among the buildable entries: a preset is data, it builds nothing), are
 * contributed by a plugin's `presets` list and read back with `registry.preset(name)`:
 *
 * ```ts
 * const { spec, train } = createDefaultRegistry().preset('moe-tiny');
 * ```
 */
import type { NodeSpec } from './schema.js';
import type { TrainConfig } from './train/trainer.js';

/** What `registry.preset(name)` returns: a fresh copy of the spec and of the training config. */
export interface Preset {
  spec: NodeSpec;
  train: Partial<TrainConfig>;
}

/** A preset as a plugin declares it. */
export interface PresetDefinition extends Preset {
  name: string;
  /** One line: what this model is. */
  description: string;
}

/** Declare a preset for a plugin's `presets` list. */
export function definePreset(name: string, description: string, spec: NodeSpec, train: Partial<TrainConfig> = {}): PresetDefinition {
  return { name, description, spec, train };
}
