/**
 * Import an official MoEUT configuration: `moeutSpecFromOfficialConfig(cfg)` takes the keyword arguments
 * of the official `MoEUTLM` (github.com/RobertCsordas/moeut; arXiv:2405.16039) and returns the moelab
 * model spec of the same network — peri-LayerNorm blocks, SwitchHead attention, σ-MoE feed-forward, G
 * distinct layers repeated n_layers / G times (`abab`), untied head with bias, embedding std 1/√d_model —
 * whose parameters carry the official `state_dict()` names, so official weights load with `loadState`.
 * See docs/moeut.md.
 */
import { MoelabError, type NodeSpec } from '@moelab/core';

function num(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number') throw new MoelabError(`the MoEUT configuration needs a number "${key}"`, `$.${key}`);
  return v;
}

/** The moelab model spec of an official `MoEUTLM` configuration (keys = the official argument names). */
export function moeutSpecFromOfficialConfig(cfg: Record<string, unknown>): NodeSpec {
  const d = num(cfg, 'd_model');
  const L = num(cfg, 'n_layers');
  const G = num(cfg, 'group_size', 2);
  if (L % G !== 0) throw new MoelabError(`n_layers ${L} is not divisible by group_size ${G}`, '$.n_layers');
  const attE = num(cfg, 'att_n_experts');
  return {
    type: 'transformer-lm',
    vocabSize: num(cfg, 'vocab_size'),
    dModel: d,
    contextLength: num(cfg, 'T', 1024),
    stack: { groupSize: G, repeats: L / G, order: 'abab' },
    headBias: true,
    tieEmbeddings: false,
    embeddingStd: 1 / Math.sqrt(d),
    outNorm: { type: 'layernorm', eps: num(cfg, 'layernorm_eps', 1e-5) },
    block: {
      type: 'transformer',
      norm: 'peri',
      normType: { type: 'layernorm', eps: num(cfg, 'layernorm_eps', 1e-5) },
      dropout: num(cfg, 'dropout', 0),
      attention: {
        type: 'switchhead',
        heads: num(cfg, 'n_heads'),
        headDim: num(cfg, 'd_head'),
        experts: attE,
        k: attE > 1 ? num(cfg, 'att_k', 2) : 1,
        rotateFraction: num(cfg, 'rotate_fraction', 0.5),
        ropeBase: num(cfg, 'rope_base', 10000),
        expertDropout: num(cfg, 'att_expert_dropout', 0),
        balanceCoef: num(cfg, 'att_entropy_reg', 0.001),
      },
      ffn: {
        type: 'sigma-moe',
        experts: num(cfg, 'ff_n_experts'),
        k: num(cfg, 'ff_k', 8),
        expertSize: num(cfg, 'ff_expert_size', 128),
        expertDropout: num(cfg, 'ff_expert_dropout', 0),
        balanceCoef: num(cfg, 'entropy_reg', 0.01),
      },
    },
  };
}
