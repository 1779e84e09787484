/** Size summaries of a built model. */
import type { Module } from './module.js';

export interface ModelSummary {
  /** Every parameter once (shared layers counted once). */
  parameters: number;
  /** Parameters used for one token: routed experts count k/E of their bank. */
  activeParameters: number;
  /** Non-embedding parameters (embedding and untied output head excluded). */
  nonEmbeddingParameters: number;
}

export function modelSummary(model: Module): ModelSummary {
  const parameters = model.parameterCount();
  const activeParameters = model.activeParameterCount();
  const emb = model
    .namedParameters()
    .filter(([n]) => n.startsWith('embedding.') || n.startsWith('lm_head.'))
    .reduce((s, [, v]) => s + v.size, 0);
  return { parameters, activeParameters, nonEmbeddingParameters: parameters - emb };
}
