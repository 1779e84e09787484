/**
 * PERFT-S (Liu et al., arXiv 2411.08212, docs/finetune.md#perft): one shared, always-active LoRA expert
 * beside each feed-forward block,
 *
 *   y_t ← y_t + (α/r) · B A x_t,   A ∈ R^{r×d},  B ∈ R^{d×r}
 *
 * Trainable parameters per layer: 2·d·r.
 */
import { Config, type ForwardContext, type tf } from '@moelab/core';
import { defineAdapter } from './adapter.js';
import { loraExpertOptions, PerftBlockAdapter } from './perft.js';

export class PerftS extends PerftBlockAdapter {
  protected weights(_x: tf.Tensor2D, _ctx: ForwardContext): null {
    return null;
  }
}

export const perftSAdapter = defineAdapter({
  name: 'perft-s',
  description: 'PERFT-S: one always-active LoRA expert beside each feed-forward block, y + (α/r) B A x.',
  reference: 'arXiv 2411.08212; docs/finetune.md#perft',
  attachment: 'block-parallel',
  targets: ['*.ffn'],
  schema: Config({ ...loraExpertOptions() }),
  build: (c, site, rng) => new PerftS(site, 1, c, rng),
});
