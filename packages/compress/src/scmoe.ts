/**
 * SCMoE, self-contrast MoE decoding (Shi et al., NeurIPS 2024, arXiv 2405.14507; official code
 * DavidFanzz/SCMoE), docs/compression.md#scmoe: the unchosen experts contribute through a contrast.
 * Every decoding step runs the same model twice, with its own top-k routing (strong) and with a weak
 * routing that sends each token to the single expert at rank r of its router logits with weight 1:
 *
 *   weak edit:  z'_{t,e} = 0 if e is the expert ranked r (0-based) in z_t, −∞ otherwise
 *               (softmax → weight 1 on that expert; the other top-k slots get weight 0)
 *   next token: argmax / sample of (1 + β) s_v − β w_v over V = { v : s_v ≥ log α + max_u s_u }
 *
 * (s, w: strong and weak log-probabilities; core's `generateTokens` option `contrast`). The paper
 * calls its weak branch "rank-2"; its run command passes index 2 into a 0-based ranking, so the rank
 * here is explicit and 0-based, default 2 (the third-ranked expert). β = 0 decodes like the strong
 * pass alone; rank 0 with top-1 routing makes the weak pass the strong one.
 */
import { MoelabError, type RouterLogitEdit, type SelfContrast, tf } from '@moelab/core';
import { type Model, moeLayers } from './surgery.js';

/** The weak routing: only the expert ranked `rank` (0-based, ties to the lower id) keeps a finite logit. */
export function rankRouting(rank: number): RouterLogitEdit {
  if (!(Number.isInteger(rank) && rank >= 0)) throw new MoelabError(`the weak rank must be a non-negative integer, got ${rank}`, '--scmoe-rank');
  return (logits) =>
    tf.tidy(() => {
      const [T, E] = logits.shape;
      if (rank >= E) throw new MoelabError(`the weak rank ${rank} needs more than ${E} experts (ranks are 0-based)`, '--scmoe-rank');
      const z = logits.dataSync();
      const out = new Float32Array(T * E).fill(Number.NEGATIVE_INFINITY);
      const order = Array.from({ length: E }, (_, e) => e);
      for (let t = 0; t < T; t++) {
        order.sort((a, b) => z[t * E + b]! - z[t * E + a]! || a - b);
        out[t * E + order[rank]!] = 0;
      }
      return tf.tensor2d(out, [T, E]);
    });
}

export interface SCMoEOptions {
  /** β ≥ 0 (the paper searches 0.1 … 0.9). */
  beta: number;
  /** Plausibility α (default 0.1). */
  alpha?: number;
  /** 0-based rank of the weak branch's expert (default 2). */
  weakRank?: number;
}

/** The `contrast` option of `generateTokens` for SCMoE: the weak routing on every MoE layer of the model. */
export function scmoeContrast(model: Model, o: SCMoEOptions): SelfContrast {
  const layers = moeLayers(model);
  if (layers.length === 0) throw new MoelabError('self-contrast decoding needs a model with moe layers (routed experts)', '--scmoe');
  if (!(o.beta >= 0)) throw new MoelabError(`the contrast weight beta must be >= 0, got ${o.beta}`, '--scmoe');
  const alpha = o.alpha ?? 0.1;
  if (!(alpha > 0 && alpha <= 1)) throw new MoelabError(`the plausibility alpha must be in (0, 1], got ${alpha}`, '--scmoe-alpha');
  const rank = o.weakRank ?? 2;
  for (const l of layers)
    if (rank >= l.numExperts) throw new MoelabError(`the weak rank ${rank} needs more than ${l.numExperts} experts (ranks are 0-based)`, '--scmoe-rank');
  const edit = rankRouting(rank);
  return { routerLogitEdits: new Map(layers.map((l) => [l.path, edit])), beta: o.beta, alpha };
}
