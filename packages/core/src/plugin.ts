/**
 * Core's own registry entries: the generic structure a model is made of (language model, block, dense
 * and MoE feed-forward shells, norms). Concrete routers, experts and attention variants come from
 * plugin packages.
 */
import type { BuildContext } from './builder.js';
import { MoelabError } from './errors.js';
import { ACTIVATIONS } from './nn/activations.js';
import type { AttentionModule } from './nn/attention.js';
import { DenseFFN } from './nn/ffn.js';
import { LayerNorm, Linear, type Norm, RMSNorm } from './nn/layers.js';
import { type ExpertBank, type FeedForward, MoELayer, type Router } from './nn/moe.js';
import { TransformerBlock, TransformerLM } from './nn/transformer.js';
import { defineEntry, definePlugin } from './registry.js';
import { Config, Node, Type } from './schema.js';

const activation = Type.Union(
  ACTIVATIONS.map((a) => Type.Literal(a)),
  { default: 'gelu', description: 'activation function' },
);

export const layerNormEntry = defineEntry({
  kind: 'norm',
  name: 'layernorm',
  description: 'LayerNorm over the model dimension (affine).',
  schema: Config({ eps: Type.Number({ default: 1e-5, exclusiveMinimum: 0 }), bias: Type.Boolean({ default: true }) }),
  create: (c, ctx) => new LayerNorm(ctx.need('dModel'), c.eps, c.bias),
});

export const rmsNormEntry = defineEntry({
  kind: 'norm',
  name: 'rmsnorm',
  description: 'RMSNorm (Zhang & Sennrich 2019): x / rms(x) * g.',
  schema: Config({ eps: Type.Number({ default: 1e-6, exclusiveMinimum: 0 }) }),
  create: (c, ctx) => new RMSNorm(ctx.need('dModel'), c.eps),
});

export const denseFFNEntry = defineEntry({
  kind: 'ffn',
  name: 'dense',
  description: 'Dense feed-forward: W2 act(W1 x), or gated (GLU / SwiGLU) with glu: true.',
  schema: Config({
    hidden: Type.Integer({ minimum: 1, default: 512, description: 'hidden width' }),
    activation,
    glu: Type.Boolean({ default: false, description: 'gated linear unit: act(W1 x) * W3 x' }),
    bias: Type.Boolean({ default: false }),
  }),
  create: (c, ctx) => new DenseFFN(ctx.need('dModel'), c.hidden, c.activation, c.glu, ctx.rng, c.bias),
});

export const moeFFNEntry = defineEntry({
  kind: 'ffn',
  name: 'moe',
  description: 'Mixture-of-Experts feed-forward: router -> dispatch -> experts -> combine, dropless or with capacity.',
  reference: 'docs/routers.md#the-router-contract, docs/routers.md#capacity-and-dropping',
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 8, description: 'number of routed experts E' }),
    router: Node('router', { default: 'softmax-topk' }),
    expert: Node('expert', { default: 'mlp' }),
    shared: Type.Optional(Node('expert', { description: 'always-on shared experts (their own count in `experts`)' })),
    capacityFactor: Type.Number({ minimum: 0, default: 0, description: 'per-expert capacity = ceil(cf * assignments / E); 0 = dropless' }),
    evalCapacityFactor: Type.Optional(Type.Number({ minimum: 0, description: 'capacity factor in eval mode (default: capacityFactor; Switch uses 2.0)' })),
    allowBatchDependent: Type.Boolean({
      default: false,
      description: 'allow a causal-safe but batch-dependent router (Mixture of Tokens) in a causal LM; generation must then batch like training',
    }),
    minCapacity: Type.Integer({ minimum: 1, default: 1, description: 'smallest per-expert capacity when capacity is on (mesh-TF, DeepSpeed: 4)' }),
    dropPolicy: Type.Union(
      (['position', 'position-interleaved', 'probs', 'batch-prioritized', 'random'] as const).map((p) => Type.Literal(p)),
      { default: 'position', description: 'which assignments survive the capacity limit (docs/routers.md#capacity-and-dropping)' },
    ),
    sharedGate: Type.Union([Type.Literal('none'), Type.Literal('sigmoid')], {
      default: 'none',
      description: "gate on the shared experts' output: none, or sigmoid = σ(w·x) per token (Qwen2-MoE; parameter shared_expert_gate.weight [1, d])",
    }),
    sharedGateStd: Type.Number({ minimum: 0, default: 0.02, description: 'init std of shared_expert_gate.weight (HF initializer_range 0.02)' }),
    expertNames: Type.Optional(
      Type.Array(Type.String(), {
        description: 'a label per routed expert (e.g. the dense model or domain an upcycled expert came from), for routing plots and reports',
      }),
    ),
  }),
  create: (c, ctx) => {
    if (c.expertNames && c.expertNames.length !== c.experts)
      throw new MoelabError(`expertNames has ${c.expertNames.length} labels for ${c.experts} experts`, `${ctx.path}.expertNames`);
    const router = ctx.build<Router>('router', c.router, 'router', { numExperts: c.experts });
    if (ctx.env.causal && router.flags.batchDependent && (!router.flags.causalSafe || !c.allowBatchDependent)) {
      throw new MoelabError(
        router.flags.causalSafe
          ? "this router is batch-dependent (a token's output depends on other examples of the batch), so one-token-at-a-time generation computes a different function than training. Set allowBatchDependent: true on the moe layer to train it anyway, or use a batch-independent router (e.g. softmax-topk, sigma-topk)."
          : "this router is batch-dependent and not causal (a token's routing depends on later tokens of its sequence), which leaks future tokens in a causal language model. Use a causal-safe router (e.g. softmax-topk, sigma-topk) here.",
        `${ctx.path}.router`,
      );
    }
    const experts = ctx.build<ExpertBank>('expert', c.expert, 'expert', { numExperts: c.experts });
    let shared: ExpertBank | undefined;
    if (c.shared !== undefined) shared = ctx.build<ExpertBank>('expert', c.shared, 'shared', { numExperts: undefined });
    if (c.sharedGate === 'sigmoid' && !shared)
      throw new MoelabError("sharedGate: 'sigmoid' gates the shared experts, but this moe layer has none: set `shared` too", `${ctx.path}.sharedGate`);
    const gate = c.sharedGate === 'sigmoid' ? new Linear(ctx.need('dModel'), 1, ctx.rng, { bias: false, std: c.sharedGateStd }) : undefined;
    return new MoELayer(
      router,
      experts,
      {
        capacityFactor: c.capacityFactor,
        evalCapacityFactor: c.evalCapacityFactor,
        minCapacity: c.minCapacity,
        dropPolicy: c.dropPolicy,
        sharedGate: c.sharedGate,
      },
      shared,
      gate,
    );
  },
});

export const transformerBlockEntry = defineEntry({
  kind: 'block',
  name: 'transformer',
  description: 'Transformer block: attention + feed-forward, sequential (pre-, post- or peri-layernorm) or parallel (y = x + Attn(N(x)) + FFN(N(x))).',
  reference: 'docs/attention-moe.md (parallel block: BAM arXiv 2408.08274 §3.1, GPT-J, PaLM)',
  schema: Config({
    layout: Type.Union([Type.Literal('sequential'), Type.Literal('parallel')], {
      default: 'sequential',
      description: 'sequential: h = x + Attn(N1 x), y = h + FFN(N2 h); parallel: y = x + Attn(N x) + FFN(N x) (needs norm: pre)',
    }),
    norms: Type.Optional(
      Type.Union([Type.Literal(1), Type.Literal(2)], {
        description: 'norms per block: a parallel block has 1 (shared by both branches, BAM) or 2 (GPT-NeoX); sequential always 2',
      }),
    ),
    norm: Type.Union([Type.Literal('pre'), Type.Literal('post'), Type.Literal('peri')], {
      default: 'pre',
      description: 'norm placement; peri = MoEUT (norm only before softmax/sigmoid inputs)',
    }),
    normType: Node('norm', { default: 'layernorm' }),
    attention: Node('attention', { default: { type: 'mha', heads: 4 } }),
    ffn: Node('ffn', { default: { type: 'dense', hidden: 512 } }),
    dropout: Type.Number({ minimum: 0, maximum: 1, default: 0 }),
  }),
  create: (c, ctx) => {
    if (c.layout === 'parallel' && c.norm !== 'pre')
      throw new MoelabError(`a parallel block normalises its input once (norm: "pre"); "${c.norm}" is for sequential blocks`, `${ctx.path}.norm`);
    if (c.layout === 'sequential' && c.norms === 1)
      throw new MoelabError('a sequential block has two norms (one per branch); norms: 1 needs layout: "parallel"', `${ctx.path}.norms`);
    const attention = ctx.build<AttentionModule>('attention', c.attention, 'attention');
    const ffn = ctx.build<FeedForward>('ffn', c.ffn, 'ffn');
    const ln1 = ctx.build<Norm>('norm', c.normType, 'normType');
    const twoNorms = c.layout === 'sequential' || c.norms === 2;
    const ln2 = twoNorms ? ctx.build<Norm>('norm', c.normType, 'normType') : undefined;
    return new TransformerBlock(attention, ffn, ln1, ln2, c.norm, c.dropout, c.layout);
  },
});

export const transformerLMEntry = defineEntry({
  kind: 'model',
  name: 'transformer-lm',
  description: 'Causal transformer language model, with optional layer grouping (shared blocks repeated).',
  schema: Config({
    vocabSize: Type.Integer({ minimum: 2, default: 256 }),
    dModel: Type.Integer({ minimum: 1, default: 128 }),
    contextLength: Type.Integer({ minimum: 1, default: 128 }),
    stack: Type.Object(
      {
        groupSize: Type.Integer({ minimum: 1, default: 2, description: 'G distinct blocks' }),
        repeats: Type.Integer({ minimum: 1, default: 1, description: 'R: the group runs R times, weights shared' }),
        order: Type.Union([Type.Literal('abab'), Type.Literal('aabb')], { default: 'abab' }),
      },
      { additionalProperties: false, default: {} },
    ),
    block: Node('block', { default: { type: 'transformer' } }),
    blocks: Type.Optional(
      Type.Array(Node('block'), {
        minItems: 1,
        description:
          'one block spec per distinct layer (length stack.groupSize), replacing `block`: stacks whose layers differ, e.g. sparse upcycling that turns every other FFN into an MoE',
      }),
    ),
    outNorm: Node('norm', { default: 'layernorm' }),
    tieEmbeddings: Type.Boolean({ default: false }),
    headBias: Type.Boolean({ default: false }),
    embeddingStd: Type.Number({ exclusiveMinimum: 0, default: 0.02 }),
    embeddingScale: Type.Number({ exclusiveMinimum: 0, default: 1 }),
    positionEmbedding: Type.Union([Type.Literal('none'), Type.Literal('learned')], {
      default: 'none',
      description:
        'learned: absolute position embeddings [contextLength, dModel] added to the token embeddings (GPT-2); none: positions come from the attention (RoPE)',
    }),
  }),
  create: (c, ctx: BuildContext) => {
    const env = { dModel: c.dModel, vocabSize: c.vocabSize, contextLength: c.contextLength, causal: true, nLayers: c.stack.groupSize * c.stack.repeats };
    const blocks: TransformerBlock[] = [];
    if (c.blocks && c.blocks.length !== c.stack.groupSize)
      throw new MoelabError(
        `blocks lists ${c.blocks.length} block specs but stack.groupSize is ${c.stack.groupSize}: give one per distinct layer`,
        `${ctx.path}.blocks`,
      );
    for (let i = 0; i < c.stack.groupSize; i++) {
      const node = c.blocks ? c.blocks[i] : c.block;
      blocks.push(ctx.build<TransformerBlock>('block', node, c.blocks ? `blocks[${i}]` : 'block', { ...env, layerIndex: i }));
    }
    const outNorm = ctx.build<Norm>('norm', c.outNorm, 'outNorm', env);
    return new TransformerLM(
      {
        vocabSize: c.vocabSize,
        dModel: c.dModel,
        contextLength: c.contextLength,
        repeats: c.stack.repeats,
        order: c.stack.order,
        tieEmbeddings: c.tieEmbeddings,
        headBias: c.headBias,
        embeddingStd: c.embeddingStd,
        embeddingScale: c.embeddingScale,
        positionEmbedding: c.positionEmbedding,
      },
      blocks,
      outNorm,
      ctx.rng,
    );
  },
});

export const corePlugin = definePlugin({
  name: '@moelab/core',
  entries: [layerNormEntry, rmsNormEntry, denseFFNEntry, moeFFNEntry, transformerBlockEntry, transformerLMEntry],
});
