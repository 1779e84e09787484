/**
 * Folding adapters into the base (docs/finetune.md#merging): an adapter whose change is a fixed change of
 * base weights becomes part of them, and the fine-tuned model needs no adapter at inference.
 *
 *   linear-wrap with Δ(x) = ΔW x (LoRA):            W0 ← W0 + ΔW
 *   activation-scale with a fixed v ((IA)³, MoV E=1): output side W0 ← diag(v) W0, b ← v ⊙ b; input side W0 ← W0 diag(v)
 *   in-expert weight deltas (MixLoRA):                W_e ← W_e + ΔW_e
 *   expert-select:                                     already in the base
 *
 * A block-parallel adapter (PERFT-S/-D/-R) adds a new path beside the block, and an input-dependent
 * mixture (MoLoRA, MoV with E > 1, PERFT-E) changes with every token; neither is a change of existing
 * weights, so merging refuses them with the reason.
 */
import { type Linear, MoelabError, type MoELayer, tf } from '@moelab/core';
import { ActivationScaleAdapter, type Adapter, BlockParallelAdapter, ExpertSelectAdapter, InExpertAdapter, LinearWrapAdapter } from './adapter.js';
import type { AdaptedModel, Model } from './adapted-model.js';

/** Why `adapter` cannot be folded into the base, or null when it can. */
export function mergeBlocker(adapter: Adapter): string | null {
  if (adapter instanceof LinearWrapAdapter) {
    const w = adapter.mergedWeight();
    if (typeof w === 'string') return w;
    w.dispose();
    return null;
  }
  if (adapter instanceof ActivationScaleAdapter) {
    const v = adapter.mergedScale();
    if (typeof v === 'string') return v;
    v.dispose();
    return null;
  }
  if (adapter instanceof InExpertAdapter) {
    const d = adapter.mergedExpertWeights();
    if (typeof d === 'string') return d;
    tf.dispose([...d.values()]);
    return null;
  }
  if (adapter instanceof BlockParallelAdapter)
    return `${adapter.constructor.name} adds a path beside the feed-forward block; the base has no weight it could fold into`;
  if (adapter instanceof ExpertSelectAdapter) return null;
  return `${adapter.constructor.name} has no merge rule`;
}

/**
 * Fold every adapter into the base weights and detach them; returns the base model, now fine-tuned.
 * Refuses (one line, nothing changed) when any adapter cannot be folded, naming where and why.
 */
export function mergeAdapters(adapted: AdaptedModel): Model {
  const blocked = adapted.adapters.map((a) => [a, mergeBlocker(a)] as const).filter(([, why]) => why !== null);
  if (blocked.length > 0) {
    const [a, why] = blocked[0]!;
    const more = blocked.length > 1 ? ` (and ${blocked.length - 1} more site${blocked.length > 2 ? 's' : ''})` : '';
    throw new MoelabError(`cannot merge: ${why}${more}; keep it as an adapter (\`moelab eval <base> --adapter <dir>\`)`, a.sitePath);
  }
  const updates: [tf.Variable, tf.Tensor][] = [];
  tf.tidy(() => {
    for (const a of adapted.adapters) {
      const module = adapted.siteOf(a).module;
      if (a instanceof LinearWrapAdapter) {
        const linear = module as Linear;
        updates.push([linear.weight, tf.keep(tf.add(linear.weight, a.mergedWeight() as tf.Tensor2D))]);
      } else if (a instanceof ActivationScaleAdapter) {
        const linear = module as Linear;
        const v = a.mergedScale() as tf.Tensor1D;
        if (a.side === 'output') {
          updates.push([linear.weight, tf.keep(tf.mul(linear.weight, tf.reshape(v, [-1, 1])))]);
          if (linear.bias) updates.push([linear.bias, tf.keep(tf.mul(linear.bias, v))]);
        } else updates.push([linear.weight, tf.keep(tf.mul(linear.weight, tf.reshape(v, [1, -1])))]);
      } else if (a instanceof InExpertAdapter) {
        const bank = (module as MoELayer).experts;
        for (const [name, d] of a.mergedExpertWeights() as Map<string, tf.Tensor>) {
          const w = bank.params.get(name);
          if (!w) throw new MoelabError(`the expert bank has no tensor "${name}"`, bank.path);
          updates.push([w, tf.keep(tf.add(w, d))]);
        }
      }
    }
  });
  // Detach first (it restores the forward methods), then write the folded weights.
  adapted.detach();
  for (const [v, t] of updates) {
    v.assign(t);
    t.dispose();
  }
  return adapted.model;
}
