/**
 * PERFT-D (Liu et al., arXiv 2411.08212, docs/finetune.md#perft): M shared LoRA experts beside each
 * feed-forward block, all always active, summed without weights:
 *
 *   y_t ← y_t + Σ_{m=1..M} (α/r) · B_m A_m x_t
 *
 * Trainable parameters per layer: M·2·d·r.
 */
import { Config, type ForwardContext, type tf, Type } from '@moelab/core';
import { defineAdapter } from './adapter.js';
import { loraExpertOptions, PerftBlockAdapter } from './perft.js';

export class PerftD extends PerftBlockAdapter {
  protected weights(_x: tf.Tensor2D, _ctx: ForwardContext): null {
    return null;
  }
}

export const perftDAdapter = defineAdapter({
  name: 'perft-d',
  description: 'PERFT-D: M always-active LoRA experts beside each feed-forward block, summed.',
  reference: 'arXiv 2411.08212; docs/finetune.md#perft',
  attachment: 'block-parallel',
  targets: ['*.ffn'],
  schema: Config({ experts: Type.Integer({ minimum: 1, default: 4, description: 'M, the number of PEFT experts' }), ...loraExpertOptions() }),
  build: (c, site, rng) => new PerftD(site, c.experts, c, rng),
});
