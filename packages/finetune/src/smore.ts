/**
 * `smore` and `smore-linear` adapters: S'MoRE, Structural Mixture of Residual Experts (Zeng et al.,
 * NeurIPS 2025, arXiv 2504.06426; official code github.com/ZimpleX/SMoRE-LLM). The layer itself — pools of
 * low-rank residual experts routed top-down into a tree per token and aggregated bottom-up — is in
 * ./smore-layer.ts:
 *
 *   Δ(x) = W_proj Σ_{top nodes t} α_t state_t + b_proj,
 *   state = σ(c_l (B_l^e (A_l^e x + a_l^e) + b_l^e) + W_l Σ_{children n} α_n state_n + w_l)
 *
 * - `smore` (block-parallel): Δ: R^d → R^d beside each feed-forward block, y ← y + Δ(x), the placement
 *   for an MoE base (no published one exists; this is PERFT's shared slot).
 * - `smore-linear` (linear-wrap): W0 x + Δ(x) around Linear modules, the published placement (the FFN
 *   projections of a dense model; here `transformer.layers.*.ffn.w?` by default).
 *
 * Identity at init: W_proj = 0 and b_proj = 0 (`init: w_final_zero`), so Δ = 0 exactly. The switch gate
 * adds its balance loss γ Σ_l s_l Σ_i f_i P_i (aux `smore_balance`, weight γ = balanceWeight). Trainable
 * parameters per site: the exact count of `smoreParameterCount` (docs/finetune.md#smore).
 */
import { Config, type Entry, type ForwardContext, MoelabError, type Rng, type Static, type tf, Type } from '@moelab/core';
import { BlockParallelAdapter, defineAdapter, LinearWrapAdapter } from './adapter.js';
import { SMORE_ACTIVATIONS, SMORE_INITS, SMoRE, type SMoREOptions } from './smore-layer.js';

const posInt = Type.Integer({ minimum: 1 });

const smoreSchema = Config({
  ranks: Type.Array(posInt, { minItems: 1, default: [4, 8], description: 'rank r_l of each pool, leaves first (the number of pools L is its length)' }),
  experts: Type.Optional(Type.Array(posInt, { minItems: 1, description: 'experts s_l of each pool (default 4 per pool)' })),
  fanout: Type.Optional(
    Type.Array(posInt, { minItems: 1, description: 'children f_l picked per routing decision (default: 2 per pool for a switch gate, s_l for a dense gate)' }),
  ),
  gateDims: Type.Optional(Type.Array(posInt, { minItems: 1, description: 'gate key width m_l of each pool (default 16 per pool)' })),
  dDown: Type.Integer({ minimum: 1, default: 16, description: 'width of the down-projected router input (official dim_downproj_x)' }),
  alpha: Type.Optional(
    Type.Array(Type.Number({ exclusiveMinimum: 0 }), { minItems: 1, description: 'α_l of each pool: scale c_l = α_l / r_l (default c_l = 1)' }),
  ),
  gate: Type.Union([Type.Literal('switch'), Type.Literal('dense')], {
    default: 'switch',
    description: 'switch: top-f_l children, weights renormalised when f_l > 1, balance loss; dense: every expert, softmax weights',
  }),
  activation: Type.Union(
    SMORE_ACTIVATIONS.map((a) => Type.Literal(a)),
    { default: 'tanh', description: 'σ of the expert nodes' },
  ),
  activationPosition: Type.Union([Type.Literal('all'), Type.Literal('child_v2')], {
    default: 'all',
    description: "all: σ on every node (paper eq. 3); child_v2: S'MoRE*, σ on the aggregated children only",
  }),
  balanceWeight: Type.Number({ minimum: 0, default: 0.01, description: 'γ of the switch-gate balance loss' }),
  init: Type.Union(
    SMORE_INITS.map((i) => Type.Literal(i)),
    { default: 'w_final_zero', description: 'w_final_zero: W_proj = 0 (output = base at init); eq_1_layer; normal (all random)' },
  ),
});

export type SMoREConfig = Static<typeof smoreSchema>;

/** The layer options of a config for a site of widths d_in → d_out (per-pool defaults filled in). */
export function smoreOptions(c: SMoREConfig, dIn: number, dOut: number): SMoREOptions {
  const L = c.ranks.length;
  const experts = c.experts ?? new Array<number>(L).fill(4);
  const fanout = c.fanout ?? (c.gate === 'dense' ? experts.slice() : experts.map((s) => Math.min(2, s)));
  return {
    dIn,
    dOut,
    ranks: c.ranks,
    experts,
    fanout,
    gateDims: c.gateDims ?? new Array<number>(L).fill(16),
    dDown: c.dDown,
    gate: c.gate,
    activation: c.activation,
    activationPosition: c.activationPosition,
    scaling: c.alpha ? c.alpha.map((a, l) => a / (c.ranks[l] ?? 1)) : new Array<number>(L).fill(1),
    balanceWeight: c.balanceWeight,
    init: c.init,
  };
}

/** The layer of a config (every per-pool list is checked against `ranks`, errors under `where`). */
function layerOf(c: SMoREConfig, dIn: number, dOut: number, rng: Rng, where: string): SMoRE {
  if (c.alpha && c.alpha.length !== c.ranks.length)
    throw new MoelabError(`alpha has ${c.alpha.length} entries but ranks has ${c.ranks.length} (one per pool, leaves first)`, `${where}.alpha`);
  return new SMoRE(smoreOptions(c, dIn, dOut), rng, where);
}

/** S'MoRE beside a feed-forward block: y ← y + Δ(x), Δ: R^d → R^d. */
export class SMoREBlockAdapter extends BlockParallelAdapter {
  readonly smore: SMoRE;
  constructor(sitePath: string, c: SMoREConfig, dModel: number, rng: Rng) {
    super(sitePath);
    this.smore = this.child('smore', layerOf(c, dModel, dModel, rng, '$.adapter'));
  }
  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    return this.smore.forward(x, ctx) as tf.Tensor2D;
  }
}

/** S'MoRE around a Linear W0 [d_out, d_in]: W0 x + Δ(x). */
export class SMoRELinearAdapter extends LinearWrapAdapter {
  readonly smore: SMoRE;
  constructor(sitePath: string, c: SMoREConfig, dIn: number, dOut: number, rng: Rng) {
    super(sitePath);
    this.smore = this.child('smore', layerOf(c, dIn, dOut, rng, '$.adapter'));
  }
  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    return this.smore.forward(x, ctx) as tf.Tensor2D;
  }
  mergedWeight(): string {
    return "S'MoRE routes every token through its own tree of experts with a non-linearity: Δ(x) is not a fixed weight change, so it cannot fold into W0";
  }
}

export const smoreAdapter: Entry = defineAdapter({
  name: 'smore',
  description: "S'MoRE beside each feed-forward block: a tree of low-rank residual experts per token, routed top-down, aggregated bottom-up.",
  reference: 'docs/finetune.md#smore; Zeng et al. 2025, arXiv 2504.06426; github.com/ZimpleX/SMoRE-LLM',
  attachment: 'block-parallel',
  targets: ['transformer.layers.*.ffn'],
  schema: smoreSchema,
  build: (c, site, rng) => new SMoREBlockAdapter(site.path, c, site.dModel, rng),
});

export const smoreLinearAdapter: Entry = defineAdapter({
  name: 'smore-linear',
  description: "S'MoRE around Linear modules (the published placement: a dense model's FFN projections): W0 x + Δ(x).",
  reference: 'docs/finetune.md#smore; Zeng et al. 2025, arXiv 2504.06426; github.com/ZimpleX/SMoRE-LLM',
  attachment: 'linear-wrap',
  targets: ['transformer.layers.*.ffn.w?'],
  schema: smoreSchema,
  build: (c, site, rng) => new SMoRELinearAdapter(site.path, c, site.module.inFeatures, site.module.outFeatures, rng),
});
