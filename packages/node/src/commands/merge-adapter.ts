/**
 * `moelab merge-adapter`: fold a saved adapter into its base (where it is a fixed change of base weights:
 * LoRA, (IA)³, MixLoRA's expert deltas) and write an ordinary checkpoint; refuses, naming the site and
 * the reason, where it is not. docs/finetune.md#merging.
 */
import { resolve } from 'node:path';
import { Command, Option } from '@commander-js/extra-typings';
import { type AdapterCheckpointConfig, baseContentHash, mergeAdapters } from '@moelab/finetune';
import { loadAdapterCheckpoint } from '../adapter-checkpoint.js';
import { type CheckpointConfig, loadCheckpoint, saveCheckpoint } from '../checkpoint.js';
import { createDefaultRegistry } from '../registry.js';
import { defineCommand } from './command.js';
import { backendOption, useBackend } from './options.js';

export const mergeAdapter = defineCommand({
  define: () =>
    new Command('merge-adapter')
      .summary('fold an adapter into its base checkpoint (LoRA-type adapters) and write a plain checkpoint')
      .argument('<base>', 'base checkpoint directory')
      .argument('<adapter>', 'adapter directory (written by `moelab finetune`)')
      .addOption(new Option('--out <dir>', 'where to write the merged checkpoint').makeOptionMandatory())
      .addOption(backendOption()),
  async run([base, adapterDir], o) {
    await useBackend(o.backend, true);
    const registry = createDefaultRegistry();
    const { model, config } = loadCheckpoint(base, registry);
    const { adapted, config: ac } = loadAdapterCheckpoint(adapterDir, model, registry);
    const merged = mergeAdapters(adapted);
    const out = resolve(o.out);
    saveCheckpoint(out, merged, {
      spec: config.spec,
      step: config.step + ac.step,
      seed: config.seed ?? 0,
      train: withoutDomain(ac.train),
    });
    process.stdout.write(
      `merged ${ac.adapters.length} adapter node(s) into ${out} (base ${ac.base.hash.slice(0, 19)}… -> ${baseContentHash(merged).slice(0, 19)}…)\n`,
    );
    return 0;
  },
});

/** A checkpoint's `train` section has no `domain` field (the adapter's does). */
function withoutDomain(train: AdapterCheckpointConfig['train']): CheckpointConfig['train'] {
  if (!train) return undefined;
  const out = { ...train };
  delete out.domain;
  return out;
}
