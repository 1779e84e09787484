/** Size summaries of a built model. */
import type { Module } from './module.js';

export interface ModelSummary {
  /** Every parameter once (shared layers counted once). */
  parameters: number;
  /** Parameters used for one token: routed experts count k/E of their bank. */
  activeParameters: number;
  /** Non-embedding parameters (token and position embeddings and the untied output head excluded). */
  nonEmbeddingParameters: number;
  /**
   * Forward FLOPs per token at the model's context length (attention included), in the convention of
   * {@link Module.flopsPerToken}: 2 per multiply-accumulate of a matrix product, attention mixing
   * 2 · n_ctx · d_attn, routers counted, norms and embeddings not. Training costs about 3x this.
   */
  forwardFlopsPerToken: number;
}

export function modelSummary(model: Module): ModelSummary {
  const parameters = model.parameterCount();
  const activeParameters = model.activeParameterCount();
  const emb = model
    .namedParameters()
    .filter(([n]) => n.startsWith('embedding.') || n.startsWith('lm_head.') || n.startsWith('position_embedding.'))
    .reduce((s, [, v]) => s + v.size, 0);
  const nCtx = (model as { contextLength?: unknown }).contextLength;
  const forwardFlopsPerToken = model.flopsPerToken(typeof nCtx === 'number' ? nCtx : 0);
  return { parameters, activeParameters, nonEmbeddingParameters: parameters - emb, forwardFlopsPerToken };
}
