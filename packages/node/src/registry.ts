import { corePlugin, createRegistry, type Plugin, type Registry } from '@moelab/core';
import { attention, attentionMoePresets, moeutPresets } from '@moelab/attention';
import { expertPresets, experts } from '@moelab/experts';
import { finetune } from '@moelab/finetune';
import { routers } from '@moelab/routers';
import { upcyclePlugin } from '@moelab/upcycle';
import { foundationPresets } from './presets.js';

/** Every plugin that ships with moelab. */
export const builtinPlugins: Plugin[] = [
  corePlugin,
  routers,
  experts,
  attention,
  finetune,
  foundationPresets,
  moeutPresets,
  attentionMoePresets,
  expertPresets,
  upcyclePlugin,
];

/** A registry with every built-in plugin (plus any extra plugins, e.g. a third-party `moelab-plugin-foo`). */
export function createDefaultRegistry(...extra: Plugin[]): Registry {
  return createRegistry(...builtinPlugins, ...extra);
}
