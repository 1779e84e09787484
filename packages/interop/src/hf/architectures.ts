/**
 * The Hugging Face decoder architectures moelab converts to and from, one table row each: its
 * `model_type` and class, what it can express (`refuses`), its config.json fields (`toConfig`,
 * `fromConfig`) and its parameter names. Read from transformers' modeling / configuration code
 * (github.com/huggingface/transformers, src/transformers/models/{llama,qwen2,mixtral,qwen2_moe,qwen3_moe,olmoe}).
 *
 * | model_type | FFN                               | attention                                   | router weights           |
 * | ---------- | --------------------------------- | ------------------------------------------- | ------------------------ |
 * | llama      | dense SwiGLU (mlp_bias)           | attention_bias on q, k, v, o                | -                        |
 * | qwen2      | dense SwiGLU                      | biases on q, k, v; none on o                | -                        |
 * | mixtral    | block_sparse_moe, experts w1/w3/w2| no biases                                   | always renormalised      |
 * | qwen2_moe  | mlp + shared_expert + σ gate      | biases on q, k, v; none on o                | norm_topk_prob           |
 * | qwen3_moe  | mlp, experts gate/up/down         | per-head q_norm / k_norm, attention_bias    | norm_topk_prob           |
 * | olmoe      | mlp, experts gate/up/down         | q_norm / k_norm over the projection         | norm_topk_prob           |
 *
 * Every architecture reads and writes `rope_scaling` (linear, llama3, yarn: transformers'
 * modeling_rope_utils.py); sliding-window attention is `sliding_window` in Mixtral and
 * `use_sliding_window` + `sliding_window` + `max_window_layers` (layers from that index on slide) in the
 * Qwen family; Llama and OLMoE have none.
 */
import { closeMatches, MoelabError, type RopeScaling } from '@moelab/core';
import type { DecoderShape, MoEShape } from './shape.js';

type Json = Record<string, unknown>;

export interface HfArchitecture {
  /** config.json `model_type`. */
  modelType: string;
  /** config.json `architectures[0]`: the transformers class. */
  className: string;
  /** Why this architecture cannot hold a model of this shape, or null. */
  refuses(s: DecoderShape): string | null;
  /** The config.json of a shape (fields transformers reads). */
  toConfig(s: DecoderShape): Json;
  /** The shape of a config.json (fields checked, defaults as in transformers' config classes). */
  fromConfig(c: ConfigReader): DecoderShape;
  /** Names inside `model.layers.<i>.` of the MoE block and its experts' projections (MoE architectures). */
  moeNames?: { block: string; gate: string; up: string; down: string };
}

/** Reads typed fields of an HF config.json, with one-line errors naming the file and the field. */
export class ConfigReader {
  constructor(
    readonly json: Json,
    readonly where: string,
    /** Prefix of field names in messages (a nested object's field: "rope_scaling."). */
    readonly prefix = '',
  ) {}

  fail(field: string, what: string): never {
    throw new MoelabError(`"${this.prefix}${field}" ${what}`, this.where);
  }

  /** A nested object field as a reader of its own (field names prefixed in messages), or undefined when absent / null. */
  object(field: string): ConfigReader | undefined {
    const v = this.json[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(field, `must be an object or null (got ${JSON.stringify(v)})`);
    return new ConfigReader(v as Json, this.where, `${this.prefix}${field}.`);
  }

  int(field: string, fallback?: number): number {
    const v = this.json[field] ?? fallback;
    if (v === undefined || v === null) this.fail(field, 'is missing');
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) this.fail(field, `must be a non-negative integer (got ${JSON.stringify(v)})`);
    return v as number;
  }

  positive(field: string, fallback?: number): number {
    const v = this.int(field, fallback);
    if (v < 1) this.fail(field, `must be at least 1 (got ${v})`);
    return v;
  }

  num(field: string, fallback?: number): number {
    const v = this.json[field] ?? fallback;
    if (v === undefined || v === null) this.fail(field, 'is missing');
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, `must be a number (got ${JSON.stringify(v)})`);
    return v as number;
  }

  bool(field: string, fallback: boolean): boolean {
    const v = this.json[field] ?? fallback;
    if (typeof v !== 'boolean') this.fail(field, `must be true or false (got ${JSON.stringify(v)})`);
    return v as boolean;
  }

  /** The field must be absent, null or one of `allowed` (moelab has no equivalent of other values). */
  only(field: string, allowed: unknown[], why: string): void {
    const v = this.json[field];
    if (v === undefined || v === null) return;
    if (!allowed.some((a) => JSON.stringify(a) === JSON.stringify(v))) this.fail(field, `= ${JSON.stringify(v)} is not supported: ${why}`);
  }
}

/** The config.json `rope_scaling` of a shape (null: plain RoPE), in transformers' field names. */
function ropeScalingConfig(s: DecoderShape): Json | null {
  const r = s.ropeScaling;
  if (!r) return null;
  if (r.type === 'linear') return { rope_type: 'linear', factor: r.factor };
  if (r.type === 'llama3')
    return {
      rope_type: 'llama3',
      factor: r.factor,
      low_freq_factor: r.lowFreqFactor ?? 1,
      high_freq_factor: r.highFreqFactor ?? 4,
      original_max_position_embeddings: r.originalContext,
    };
  return {
    rope_type: 'yarn',
    factor: r.factor,
    original_max_position_embeddings: r.originalContext,
    beta_fast: r.betaFast ?? 32,
    beta_slow: r.betaSlow ?? 1,
    ...(r.attentionFactor !== undefined ? { attention_factor: r.attentionFactor } : {}),
    ...(r.truncate === false ? { truncate: false } : {}),
  };
}

const ROPE_FIELDS: Record<string, string[]> = {
  default: [],
  linear: ['factor'],
  llama3: ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'],
  yarn: ['factor', 'original_max_position_embeddings', 'beta_fast', 'beta_slow', 'attention_factor', 'mscale', 'mscale_all_dim', 'truncate'],
};

/**
 * The RoPE settings of a config.json: `rope_theta` and `rope_scaling` (transformers 4), or
 * `rope_parameters` holding both (transformers 5 writes `{ rope_type, rope_theta, … }` there and may
 * leave no top-level rope_theta). Reading only rope_theta would silently take the default base.
 */
function readRope(c: ConfigReader, contextLength: number, defaultTheta: number): { base: number; scaling?: RopeScaling } {
  const params = c.object('rope_parameters');
  if (!params) return { base: c.num('rope_theta', defaultTheta), scaling: readRopeScaling(c.object('rope_scaling'), contextLength) };
  params.only('partial_rotary_factor', [1], 'these decoders rotate the whole head');
  const base = params.json.rope_theta !== undefined && params.json.rope_theta !== null ? params.num('rope_theta') : c.num('rope_theta', defaultTheta);
  return { base, scaling: readRopeScaling(params, contextLength, ['rope_theta', 'partial_rotary_factor']) };
}

/**
 * The `rope_scaling` of a config.json as moelab's RopeScaling (undefined: plain RoPE). yarn takes
 * `factor` as written (transformers 5; version 4 replaced it by max_position_embeddings /
 * original_max_position_embeddings when both are given) and derives the attention factor from mscale /
 * mscale_all_dim when both are set (DeepSeek's form): m = (0.1·mscale·ln s + 1) / (0.1·mscale_all_dim·ln s + 1).
 */
function readRopeScaling(r: ConfigReader | undefined, contextLength: number, alsoAllowed: string[] = []): RopeScaling | undefined {
  if (!r) return undefined;
  const type = r.json.rope_type ?? r.json.type ?? 'default';
  const field = 'rope_type' in r.json ? 'rope_type' : 'type';
  const known = typeof type === 'string' && Object.hasOwn(ROPE_FIELDS, type) ? ROPE_FIELDS[type] : undefined;
  if (!known)
    r.fail(
      field,
      `= ${JSON.stringify(type)} is not supported: moelab implements ${Object.keys(ROPE_FIELDS)
        .filter((t) => t !== 'default')
        .join(', ')} (dynamic rescales with the sequence length; longrope and the others have no moelab equivalent)`,
    );
  for (const k of Object.keys(r.json))
    if (k !== 'rope_type' && k !== 'type' && !known!.includes(k) && !alsoAllowed.includes(k))
      r.fail(k, `is not a ${type} RoPE field moelab reads${known!.length ? ` (${known!.join(', ')})` : ''}`);
  if (type === 'default') return undefined;
  const factor = r.num('factor');
  if (!(factor > 0)) r.fail('factor', `must be positive (got ${factor})`);
  if (type === 'linear') return { type: 'linear', factor };
  if (type === 'llama3')
    return {
      type: 'llama3',
      factor,
      lowFreqFactor: r.num('low_freq_factor'),
      highFreqFactor: r.num('high_freq_factor'),
      originalContext: r.positive('original_max_position_embeddings'),
    };
  const out: RopeScaling = {
    type: 'yarn',
    factor,
    originalContext: r.positive('original_max_position_embeddings', contextLength),
    betaFast: r.num('beta_fast', 32),
    betaSlow: r.num('beta_slow', 1),
  };
  const mscale = (v: number) => (factor <= 1 ? 1 : 0.1 * v * Math.log(factor) + 1);
  if (r.json.attention_factor !== undefined && r.json.attention_factor !== null) out.attentionFactor = r.num('attention_factor');
  else if (r.json.mscale && r.json.mscale_all_dim) out.attentionFactor = mscale(r.num('mscale')) / mscale(r.num('mscale_all_dim'));
  if (!r.bool('truncate', true)) out.truncate = false;
  return out;
}

/** Sliding window of the Qwen family: use_sliding_window, sliding_window, and max_window_layers or layer_types (which layers slide). */
function readQwenWindow(c: ConfigReader, layers: number): number | undefined {
  const types = c.json.layer_types;
  if (Array.isArray(types)) {
    if (types.every((t) => t === 'full_attention')) return undefined;
    if (types.every((t) => t === 'sliding_attention')) return c.positive('sliding_window');
    c.fail('layer_types', 'mixes full and sliding-window layers: moelab builds every layer alike');
  }
  if (!c.bool('use_sliding_window', false)) return undefined;
  const from = c.int('max_window_layers', 28);
  if (from >= layers) return undefined;
  if (from > 0)
    c.fail(
      'max_window_layers',
      `= ${from}: layers ${from}.. slide and the first ${from} do not; moelab builds every layer alike (0: every layer slides, >= num_hidden_layers: none)`,
    );
  return c.positive('sliding_window');
}

const qwenWindowConfig = (s: DecoderShape): Json =>
  s.slidingWindow === undefined
    ? { use_sliding_window: false, sliding_window: null }
    : { use_sliding_window: true, sliding_window: s.slidingWindow, max_window_layers: 0 };

function common(s: DecoderShape, arch: { modelType: string; className: string }): Json {
  return {
    architectures: [arch.className],
    model_type: arch.modelType,
    vocab_size: s.vocabSize,
    hidden_size: s.dModel,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    head_dim: s.headDim,
    max_position_embeddings: s.contextLength,
    rms_norm_eps: s.normEps,
    rope_theta: s.ropeBase,
    rope_scaling: ropeScalingConfig(s),
    hidden_act: 'silu',
    tie_word_embeddings: s.tieEmbeddings,
    initializer_range: s.initStd,
    attention_dropout: 0,
    use_cache: true,
    torch_dtype: 'float32',
  };
}

/** The fields every architecture reads the same way. */
function readCommon(c: ConfigReader, defaults: { eps: number; theta: number }): Omit<DecoderShape, 'qkvBias' | 'oBias' | 'qkNorm' | 'ffn' | 'slidingWindow'> {
  const dModel = c.positive('hidden_size');
  const heads = c.positive('num_attention_heads');
  const kvHeads = c.positive('num_key_value_heads', heads);
  if (heads % kvHeads !== 0) throw new MoelabError(`"num_key_value_heads" ${kvHeads} does not divide "num_attention_heads" ${heads}`, c.where);
  const headDim = c.positive('head_dim', dModel / heads);
  c.only('hidden_act', ['silu'], 'moelab converts SwiGLU (silu) MLPs');
  const contextLength = c.positive('max_position_embeddings');
  const rope = readRope(c, contextLength, defaults.theta);
  return {
    vocabSize: c.positive('vocab_size'),
    dModel,
    layers: c.positive('num_hidden_layers'),
    contextLength,
    tieEmbeddings: c.bool('tie_word_embeddings', false),
    normEps: c.num('rms_norm_eps', defaults.eps),
    initStd: c.num('initializer_range', 0.02),
    heads,
    kvHeads,
    headDim,
    ropeBase: rope.base,
    ...(rope.scaling ? { ropeScaling: rope.scaling } : {}),
  };
}

/** Qwen-MoE's layer pattern: every layer must be sparse (moelab's blocks share one spec). */
function allSparse(c: ConfigReader): void {
  c.only('decoder_sparse_step', [1], 'moelab builds every layer alike, so every layer must be an MoE layer (decoder_sparse_step 1)');
  c.only('mlp_only_layers', [[]], 'moelab builds every layer alike (no dense-only layers)');
}

function readMoE(c: ConfigReader, expertsField: string, hiddenField: string, renormalize: boolean | null): MoEShape {
  const experts = c.positive(expertsField);
  const k = c.positive('num_experts_per_tok');
  if (k > experts) throw new MoelabError(`"num_experts_per_tok" ${k} exceeds "${expertsField}" ${experts}`, c.where);
  return {
    kind: 'moe',
    experts,
    k,
    renormalize: renormalize ?? c.bool('norm_topk_prob', false),
    hidden: c.positive(hiddenField),
    auxCoef: c.num('router_aux_loss_coef', 0.001),
    jitter: c.num('router_jitter_noise', 0),
  };
}

const biasesAll = (s: DecoderShape) => (s.qkvBias === s.oBias ? null : 'q/k/v biases without an o bias are Qwen2-style (qwen2, qwen2_moe)');
const biasesQkv = (s: DecoderShape) => (s.qkvBias && !s.oBias ? null : 'Qwen2 attention has biases on q, k, v and none on o (qkvBias: true, bias: false)');
const noQkNorm = (s: DecoderShape) => (s.qkNorm === 'none' ? null : `q/k norms (qkNorm "${s.qkNorm}") are not part of this architecture`);
const plainHeadDim = (s: DecoderShape) => (s.headDim * s.heads === s.dModel ? null : `headDim ${s.headDim} ≠ dModel / heads: this architecture derives it`);
const noWindow = (s: DecoderShape) =>
  s.slidingWindow === undefined ? null : 'sliding-window attention is not part of this architecture (mixtral, qwen2, qwen2_moe and qwen3_moe have it)';
const first = (...reasons: (string | null)[]) => reasons.find((r) => r !== null) ?? null;
const isMoE = (s: DecoderShape): s is DecoderShape & { ffn: MoEShape } => s.ffn.kind === 'moe';
const dense = (s: DecoderShape) => (s.ffn.kind === 'dense' ? null : 'an MoE feed-forward needs an MoE architecture');
const moe = (s: DecoderShape) => (isMoE(s) ? null : 'a dense feed-forward needs a dense architecture (llama, qwen2)');
const noShared = (s: DecoderShape) => (isMoE(s) && s.ffn.sharedHidden !== undefined ? 'a gated shared expert is Qwen2-MoE (qwen2_moe)' : null);

function moeConfig(s: DecoderShape, expertsField: string): Json {
  const f = s.ffn as MoEShape;
  return { [expertsField]: f.experts, num_experts_per_tok: f.k, router_aux_loss_coef: f.auxCoef, output_router_logits: false };
}

export const llama: HfArchitecture = {
  modelType: 'llama',
  className: 'LlamaForCausalLM',
  refuses: (s) => first(dense(s), noQkNorm(s), biasesAll(s), noWindow(s)),
  toConfig: (s) => ({
    ...common(s, llama),
    intermediate_size: (s.ffn as { hidden: number }).hidden,
    attention_bias: s.oBias,
    mlp_bias: s.ffn.kind === 'dense' && s.ffn.bias,
    pretraining_tp: 1,
  }),
  fromConfig: (c) => {
    c.only('pretraining_tp', [1], 'moelab does not split projections for tensor-parallel pretraining');
    const bias = c.bool('attention_bias', false);
    return {
      ...readCommon(c, { eps: 1e-6, theta: 10000 }),
      qkvBias: bias,
      oBias: bias,
      qkNorm: 'none',
      ffn: { kind: 'dense', hidden: c.positive('intermediate_size'), bias: c.bool('mlp_bias', false) },
    };
  },
};

export const qwen2: HfArchitecture = {
  modelType: 'qwen2',
  className: 'Qwen2ForCausalLM',
  refuses: (s) => first(dense(s), noQkNorm(s), biasesQkv(s), s.ffn.kind === 'dense' && s.ffn.bias ? 'Qwen2 MLPs have no biases' : null, plainHeadDim(s)),
  toConfig: (s) => ({ ...common(s, qwen2), intermediate_size: (s.ffn as { hidden: number }).hidden, ...qwenWindowConfig(s) }),
  fromConfig: (c) => ({
    ...readCommon(c, { eps: 1e-6, theta: 10000 }),
    slidingWindow: readQwenWindow(c, c.positive('num_hidden_layers')),
    qkvBias: true,
    oBias: false,
    qkNorm: 'none',
    ffn: { kind: 'dense', hidden: c.positive('intermediate_size'), bias: false },
  }),
};

export const mixtral: HfArchitecture = {
  modelType: 'mixtral',
  className: 'MixtralForCausalLM',
  refuses: (s) =>
    first(
      moe(s),
      noShared(s),
      noQkNorm(s),
      s.qkvBias || s.oBias ? 'Mixtral attention has no biases' : null,
      isMoE(s) && !s.ffn.renormalize ? 'Mixtral renormalises the top-k weights (norm_topk_prob false needs qwen2_moe, qwen3_moe or olmoe)' : null,
    ),
  toConfig: (s) => ({
    ...common(s, mixtral),
    ...moeConfig(s, 'num_local_experts'),
    intermediate_size: (s.ffn as MoEShape).hidden,
    router_jitter_noise: (s.ffn as MoEShape).jitter,
    sliding_window: s.slidingWindow ?? null,
  }),
  fromConfig: (c) => {
    const window = c.json.sliding_window;
    return {
      ...readCommon(c, { eps: 1e-5, theta: 1e6 }),
      slidingWindow: window === undefined || window === null ? undefined : c.positive('sliding_window'),
      qkvBias: false,
      oBias: false,
      qkNorm: 'none',
      ffn: readMoE(c, 'num_local_experts', 'intermediate_size', true),
    };
  },
  moeNames: { block: 'block_sparse_moe', gate: 'w1', up: 'w3', down: 'w2' },
};

const qwenMoeNames = { block: 'mlp', gate: 'gate_proj', up: 'up_proj', down: 'down_proj' };

export const qwen2Moe: HfArchitecture = {
  modelType: 'qwen2_moe',
  className: 'Qwen2MoeForCausalLM',
  refuses: (s) =>
    first(
      moe(s),
      noQkNorm(s),
      biasesQkv(s),
      isMoE(s) && s.ffn.sharedHidden === undefined ? 'Qwen2-MoE layers have a gated shared expert (shared + sharedGate: sigmoid)' : null,
      plainHeadDim(s),
    ),
  toConfig: (s) => {
    const f = s.ffn as MoEShape;
    return {
      ...common(s, qwen2Moe),
      ...moeConfig(s, 'num_experts'),
      moe_intermediate_size: f.hidden,
      shared_expert_intermediate_size: f.sharedHidden,
      intermediate_size: f.sharedHidden,
      norm_topk_prob: f.renormalize,
      decoder_sparse_step: 1,
      mlp_only_layers: [],
      ...qwenWindowConfig(s),
    };
  },
  fromConfig: (c) => {
    allSparse(c);
    const ffn = readMoE(c, 'num_experts', 'moe_intermediate_size', null);
    ffn.sharedHidden = c.positive('shared_expert_intermediate_size');
    const slidingWindow = readQwenWindow(c, c.positive('num_hidden_layers'));
    return { ...readCommon(c, { eps: 1e-6, theta: 10000 }), slidingWindow, qkvBias: true, oBias: false, qkNorm: 'none', ffn };
  },
  moeNames: qwenMoeNames,
};

export const qwen3Moe: HfArchitecture = {
  modelType: 'qwen3_moe',
  className: 'Qwen3MoeForCausalLM',
  refuses: (s) => first(moe(s), noShared(s), s.qkNorm === 'head' ? null : 'Qwen3-MoE normalises q and k per head (qkNorm: "head")', biasesAll(s)),
  toConfig: (s) => {
    const f = s.ffn as MoEShape;
    return {
      ...common(s, qwen3Moe),
      ...moeConfig(s, 'num_experts'),
      moe_intermediate_size: f.hidden,
      intermediate_size: f.hidden,
      norm_topk_prob: f.renormalize,
      decoder_sparse_step: 1,
      mlp_only_layers: [],
      attention_bias: s.oBias,
      ...qwenWindowConfig(s),
    };
  },
  fromConfig: (c) => {
    allSparse(c);
    const bias = c.bool('attention_bias', false);
    return {
      ...readCommon(c, { eps: 1e-6, theta: 10000 }),
      slidingWindow: readQwenWindow(c, c.positive('num_hidden_layers')),
      qkvBias: bias,
      oBias: bias,
      qkNorm: 'head',
      ffn: readMoE(c, 'num_experts', 'moe_intermediate_size', null),
    };
  },
  moeNames: qwenMoeNames,
};

export const olmoe: HfArchitecture = {
  modelType: 'olmoe',
  className: 'OlmoeForCausalLM',
  refuses: (s) =>
    first(
      moe(s),
      noShared(s),
      s.qkNorm === 'projection' ? null : 'OLMoE normalises the whole q and k projections (qkNorm: "projection")',
      biasesAll(s),
      plainHeadDim(s),
      noWindow(s),
    ),
  toConfig: (s) => {
    const f = s.ffn as MoEShape;
    return {
      ...common(s, olmoe),
      ...moeConfig(s, 'num_experts'),
      intermediate_size: f.hidden,
      norm_topk_prob: f.renormalize,
      attention_bias: s.oBias,
      clip_qkv: null,
    };
  },
  fromConfig: (c) => {
    c.only('clip_qkv', [], 'moelab does not clamp q, k, v');
    const bias = c.bool('attention_bias', false);
    return {
      ...readCommon(c, { eps: 1e-5, theta: 10000 }),
      qkvBias: bias,
      oBias: bias,
      qkNorm: 'projection',
      ffn: readMoE(c, 'num_experts', 'intermediate_size', null),
    };
  },
  moeNames: qwenMoeNames,
};

/** Every architecture, MoE ones first (the order `--arch auto` tries them in). */
export const HF_ARCHITECTURES: readonly HfArchitecture[] = [mixtral, qwen2Moe, qwen3Moe, olmoe, llama, qwen2];

/** The architecture of a model_type, or a one-line error listing the supported ones (closest first). */
export function architecture(modelType: unknown, where?: string): HfArchitecture {
  const names = HF_ARCHITECTURES.map((a) => a.modelType);
  const a = HF_ARCHITECTURES.find((x) => x.modelType === modelType);
  if (a) return a;
  const close = typeof modelType === 'string' ? closeMatches(modelType, names) : [];
  throw new MoelabError(
    `unknown model_type ${JSON.stringify(modelType)}${close.length ? ` (did you mean ${close.join(', ')}?)` : ''}; moelab converts ${names.join(', ')}`,
    where,
  );
}

/** The architectures that can hold a model of this shape, in {@link HF_ARCHITECTURES} order. */
export function architecturesFor(s: DecoderShape): HfArchitecture[] {
  return HF_ARCHITECTURES.filter((a) => a.refuses(s) === null);
}
