/** The tiny MoE language model the compression tests prune, merge and distil. */
import { buildModel, type NodeSpec, type Registry } from '@moelab/core';
import type { Model, SpecModel } from '../src/surgery.js';

/** Its sizes: experts per MoE layer, model width, SwiGLU experts' hidden units. */
export const TINY_MOE = { E: 4, D: 16, H: 12 } as const;

/**
 * A two-layer LM (vocab 32, d 16, context 8, 2 heads, 4 experts per MoE layer; weights from seed 5).
 * k = 0 routes by hash (one expert per token, gate 1); k >= 1 is softmax top-k, renormalised.
 * `expert` defaults to SwiGLU experts of 12 hidden units.
 */
export function tinyMoeLm(registry: Registry, k: number, expert: Record<string, unknown> = { type: 'glu', hidden: TINY_MOE.H }): SpecModel {
  const spec: NodeSpec = {
    type: 'transformer-lm',
    vocabSize: 32,
    dModel: TINY_MOE.D,
    contextLength: 8,
    stack: { groupSize: 2, repeats: 1 },
    block: {
      type: 'transformer',
      attention: { type: 'mha', heads: 2 },
      ffn: { type: 'moe', experts: TINY_MOE.E, router: k === 0 ? { type: 'hash' } : { type: 'softmax-topk', k, renormalize: true }, expert },
    },
  };
  return { spec, model: buildModel<Model>(spec, registry, 5) };
}
