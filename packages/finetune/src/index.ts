/**
 * @moelab/finetune — parameter-efficient fine-tuning for and with mixtures of experts: the `adapter`
 * registry kind and its five attachment points, frozen-base training with masked updates, adapter
 * checkpoints keyed by the base's content hash, and the adapters LoRA, ESFT, S'MoRE, PERFT (-S, -D, -R, -E),
 * MoV, MoLoRA and MixLoRA. Isomorphic: no fs, no native code. See docs/finetune.md.
 * @packageDocumentation
 */
import { definePlugin, type Plugin } from '@moelab/core';
import { esftAdapter } from './esft/adapter.js';
import { loraAdapter } from './lora.js';
import { mixloraAdapter } from './mixlora.js';
import { moloraAdapter } from './molora.js';
import { movAdapter } from './mov.js';
import { perftDAdapter } from './perft-d.js';
import { perftEAdapter } from './perft-e.js';
import { perftRAdapter } from './perft-r.js';
import { perftSAdapter } from './perft-s.js';
import { smoreAdapter, smoreLinearAdapter } from './smore.js';

export * from './adapter.js';
export * from './adapted-model.js';
export * from './esft/adapter.js';
export * from './esft/scores.js';
export * from './esft/select.js';
export * from './checkpoint.js';
export * from './hash.js';
export * from './low-rank.js';
export * from './merge.js';
export * from './methods.js';
export * from './lora.js';
export * from './mixlora.js';
export * from './molora.js';
export * from './mov.js';
export * from './perft.js';
export * from './perft-d.js';
export * from './perft-e.js';
export * from './perft-r.js';
export * from './perft-s.js';
export * from './smore.js';
export * from './smore-layer.js';
export * from './targets.js';

/** Every adapter of this package, for `registry.use(finetune)`. */
export const finetune: Plugin = definePlugin({
  name: '@moelab/finetune',
  entries: [
    loraAdapter,
    esftAdapter,
    perftSAdapter,
    perftDAdapter,
    perftRAdapter,
    perftEAdapter,
    smoreAdapter,
    smoreLinearAdapter,
    movAdapter,
    moloraAdapter,
    mixloraAdapter,
  ],
});
