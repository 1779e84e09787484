/**
 * The decoder shape both directions of the Hugging Face conversion go through: every number and switch
 * that decides the parameter names, shapes and the forward function of a pre-norm RMSNorm decoder with
 * RoPE attention and a dense SwiGLU or a softmax top-k MoE feed-forward. A moelab spec is read into it
 * (`shapeFromSpec`, which says why when a spec does not fit), an HF config.json too (architectures.ts);
 * each side is written back from it.
 *
 *   h = x + Attn(RMSNorm₁(x));   y = h + FFN(RMSNorm₂(h));   logits = RMSNorm_out(h_L) W_lm^T
 *   MoE:  p = softmax(W_g x) (float32),  S = top-k(p),  g_e = p_e / Σ_{j∈S} p_j  (renormalize) or p_e
 *         FFN(x) = Σ_{e∈S} g_e · SwiGLU_e(x)  [+ σ(w_s · x) · SwiGLU_shared(x)]
 */
import { MoelabError, type NodeSpec, type Registry, type RopeScaling, resolveConfig } from '@moelab/core';

export interface DenseShape {
  kind: 'dense';
  /** Hidden width of the SwiGLU MLP (HF intermediate_size). */
  hidden: number;
  /** Biases on gate / up / down (HF mlp_bias). */
  bias: boolean;
}

export interface MoEShape {
  kind: 'moe';
  experts: number;
  k: number;
  /** Renormalise the k selected probabilities (HF norm_topk_prob; Mixtral always). */
  renormalize: boolean;
  /** Hidden width of each routed SwiGLU expert. */
  hidden: number;
  /** Load-balancing coefficient in the HF (×k) convention (router_aux_loss_coef). */
  auxCoef: number;
  /** Router input jitter (router_jitter_noise), training only. */
  jitter: number;
  /** Qwen2-MoE: one shared SwiGLU expert of this width, gated by σ(w·x). */
  sharedHidden?: number;
}

export interface DecoderShape {
  vocabSize: number;
  dModel: number;
  layers: number;
  contextLength: number;
  tieEmbeddings: boolean;
  /** RMSNorm epsilon of every norm (HF rms_norm_eps). */
  normEps: number;
  /** Std of the embedding init (HF initializer_range). */
  initStd: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ropeBase: number;
  /** RoPE context extension (HF rope_scaling: linear, llama3, yarn). */
  ropeScaling?: RopeScaling;
  /** Sliding-window attention over every layer (HF sliding_window): each query sees the last slidingWindow positions. */
  slidingWindow?: number;
  qkvBias: boolean;
  oBias: boolean;
  qkNorm: 'none' | 'head' | 'projection';
  /**
   * moelab side only: RoPE pairs channels (2i, 2i+1) (`ropeLayout: "interleaved"`). transformers rotates
   * half, so the export reorders the rows of q_proj / k_proj (and their biases and q/k norm gains) within
   * each head to evens-then-odds: the same attention, as HF's Llama weight converter does.
   */
  ropeInterleaved?: boolean;
  ffn: DenseShape | MoEShape;
}

/** Why a spec does not fit the decoder shape (one reason), or the shape plus notes on training-only settings that do not carry over. */
export type ShapeResult = { ok: true; shape: DecoderShape; notes: string[] } | { ok: false; reason: string };

type Cfg = Record<string, unknown>;

/** Read a moelab model spec into the decoder shape, or say what HF's decoder layouts cannot express. */
export function shapeFromSpec(spec: NodeSpec, registry: Registry): ShapeResult {
  const notes: string[] = [];
  const fail = (reason: string): ShapeResult => ({ ok: false, reason });
  const model = resolveConfig(registry, 'model', spec, '$');
  if (model.type !== 'transformer-lm') return fail(`the model is "${model.type}"; HF decoder layouts hold transformer-lm models`);
  const m = model.config;
  const stack = m.stack as { groupSize: number; repeats: number };
  if (stack.repeats !== 1) return fail(`stack.repeats ${stack.repeats} shares weights across layers; HF decoder layers are independent`);
  if (m.positionEmbedding !== 'none') return fail('learned absolute position embeddings: HF MoE / Llama decoders use RoPE only');
  if (m.embeddingScale !== 1) return fail(`embeddingScale ${m.embeddingScale}: HF decoders do not scale embeddings`);
  if (m.headBias) return fail('headBias: the HF lm_head has no bias');
  const outNorm = resolveConfig(registry, 'norm', m.outNorm as NodeSpec, '$.outNorm');
  const blocks = m.blocks as NodeSpec[] | undefined;
  if (blocks?.some((b) => JSON.stringify(b) !== JSON.stringify(blocks[0])))
    return fail('its layers differ (blocks lists different block specs); the HF layouts moelab converts have one layer type');
  const block = resolveConfig(registry, 'block', (blocks?.[0] ?? m.block) as NodeSpec, blocks ? '$.blocks[0]' : '$.block');
  if (block.type !== 'transformer') return fail(`block "${block.type}": HF decoders are transformer blocks`);
  const b = block.config;
  if (b.layout !== 'sequential' || b.norm !== 'pre') return fail(`block layout ${b.layout} / norm ${b.norm}: HF decoders are sequential pre-norm blocks`);
  if ((b.dropout as number) > 0) notes.push(`block dropout ${b.dropout} (training only) has no HF field and is not exported`);
  const norm = resolveConfig(registry, 'norm', b.normType as NodeSpec, '$.block.normType');
  if (norm.type !== 'rmsnorm' || outNorm.type !== 'rmsnorm') return fail('LayerNorm: these HF decoders use RMSNorm (block.normType and outNorm: rmsnorm)');
  const eps = norm.config.eps as number;
  if (outNorm.config.eps !== eps) return fail(`outNorm eps ${outNorm.config.eps} differs from the blocks' ${eps}; HF has one rms_norm_eps`);
  const att = resolveConfig(registry, 'attention', b.attention as NodeSpec, '$.block.attention');
  if (att.type !== 'mha') return fail(`attention "${att.type}": HF decoders use multi-head attention (mha)`);
  const a = att.config as Cfg;
  const dModel = m.dModel as number;
  const heads = a.heads as number;
  const headDim = (a.headDim as number | undefined) ?? dModel / heads;
  if ((a.ropeDims ?? headDim) !== headDim) return fail(`ropeDims ${a.ropeDims} rotates part of each head; these HF decoders rotate the whole head`);
  if (a.ropeLayout === 'interleaved')
    notes.push('interleaved RoPE: the q / k projection rows are reordered per head to the rotate_half layout (the same attention)');
  const scaling = a.ropeScaling as RopeScaling | undefined;
  if (scaling?.type === 'yarn' && scaling.factor * scaling.originalContext! !== m.contextLength)
    notes.push(
      `yarn factor ${scaling.factor} × originalContext ${scaling.originalContext} ≠ contextLength ${m.contextLength}: transformers 4 derives the factor as max_position_embeddings / original_max_position_embeddings, transformers 5 reads factor`,
    );
  const qkNorm = a.qkNorm as DecoderShape['qkNorm'];
  if (qkNorm !== 'none' && a.qkNormEps !== eps) return fail(`qkNormEps ${a.qkNormEps} differs from the norms' eps ${eps}; HF has one rms_norm_eps`);
  const ffnNode = resolveConfig(registry, 'ffn', b.ffn as NodeSpec, '$.block.ffn');
  let ffn: DecoderShape['ffn'];
  const swiglu = (type: string, c: Cfg) => (type === 'glu' || (type === 'mlp' && c.glu === true)) && c.activation === 'silu';
  if (ffnNode.type === 'dense') {
    const f = ffnNode.config;
    if (!(f.glu && f.activation === 'silu')) return fail('the dense FFN is not SwiGLU (glu: true, activation: silu), the MLP of Llama / Qwen2');
    ffn = { kind: 'dense', hidden: f.hidden as number, bias: f.bias as boolean };
  } else if (ffnNode.type === 'moe') {
    const f = ffnNode.config;
    if ((f.capacityFactor as number) > 0 || ((f.evalCapacityFactor as number | undefined) ?? 0) > 0)
      return fail(`capacityFactor ${f.capacityFactor} drops tokens; HF MoE layers are dropless (capacityFactor 0)`);
    const router = resolveConfig(registry, 'router', f.router as NodeSpec, '$.block.ffn.router');
    const r = router.config as Cfg;
    let renormalize: boolean;
    if (router.type === 'softmax-topk') {
      renormalize = r.renormalize as boolean;
      if (r.expertBias) return fail('the router has an aux-loss-free selection bias; HF softmax top-k routers have none');
      if ((r.scale ?? 1) !== 1) return fail(`routed scaling ${r.scale}: HF softmax top-k routers do not scale the weights`);
      if (r.noisy || (r.noiseStd as number) > 0) notes.push('router noise (training only) has no HF field and is not exported');
      if ((r.zLossCoef as number) > 0) notes.push('router z-loss (training only) has no HF field and is not exported');
      if (r.balanceParity !== 'hf' && (r.balanceCoef as number) > 0)
        notes.push(`balanceCoef ${r.balanceCoef} is in the canonical form; router_aux_loss_coef gets it × k (the HF form)`);
    } else if (router.type === 'mixtral') renormalize = true;
    else if (router.type === 'olmoe' || router.type === 'qwen2-moe') renormalize = false;
    else return fail(`router "${router.type}": HF MoE layouts route with softmax top-k (token choice)`);
    const k = r.k as number;
    const coef = (r.balanceCoef as number) * (router.type === 'softmax-topk' && r.balanceParity !== 'hf' ? k : 1);
    const expert = resolveConfig(registry, 'expert', f.expert as NodeSpec, '$.block.ffn.expert');
    if (!swiglu(expert.type, expert.config))
      return fail(`experts "${expert.type}" are not SwiGLU (glu, activation silu); HF experts are gate / up / down MLPs`);
    let sharedHidden: number | undefined;
    if (f.shared !== undefined) {
      const shared = resolveConfig(registry, 'expert', f.shared as NodeSpec, '$.block.ffn.shared');
      if (!swiglu(shared.type, shared.config)) return fail('the shared expert is not SwiGLU (glu, activation silu)');
      if (((shared.config.count as number | undefined) ?? 1) !== 1) return fail(`${shared.config.count} shared experts: Qwen2-MoE has one`);
      if (f.sharedGate !== 'sigmoid') return fail("a shared expert without the sigmoid gate: Qwen2-MoE gates it (sharedGate: 'sigmoid')");
      sharedHidden = shared.config.hidden as number;
    }
    ffn = {
      kind: 'moe',
      experts: f.experts as number,
      k,
      renormalize,
      hidden: expert.config.hidden as number,
      auxCoef: coef,
      jitter: (r.jitterEps as number | undefined) ?? 0,
      sharedHidden,
    };
  } else return fail(`ffn "${ffnNode.type}": HF decoders have a dense SwiGLU MLP or a softmax top-k MoE of SwiGLU experts`);
  return {
    ok: true,
    notes,
    shape: {
      vocabSize: m.vocabSize as number,
      dModel,
      layers: stack.groupSize,
      contextLength: m.contextLength as number,
      tieEmbeddings: m.tieEmbeddings as boolean,
      normEps: eps,
      initStd: m.embeddingStd as number,
      heads,
      kvHeads: (a.kvHeads as number | undefined) ?? heads,
      headDim,
      ropeBase: a.ropeBase as number,
      ropeScaling: a.ropeScaling as RopeScaling | undefined,
      slidingWindow: a.slidingWindow as number | undefined,
      qkvBias: (a.qkvBias as boolean | undefined) ?? (a.bias as boolean),
      oBias: a.bias as boolean,
      qkNorm,
      ropeInterleaved: a.ropeLayout === 'interleaved',
      ffn,
    },
  };
}

/** The moelab spec of a decoder shape. */
export function specFromShape(s: DecoderShape): NodeSpec {
  const rms = { type: 'rmsnorm', eps: s.normEps };
  const attention: Cfg = { type: 'mha', heads: s.heads, ropeBase: s.ropeBase, ropeLayout: 'half', bias: s.oBias, qkvBias: s.qkvBias };
  if (s.kvHeads !== s.heads) attention.kvHeads = s.kvHeads;
  if (s.headDim * s.heads !== s.dModel) attention.headDim = s.headDim;
  if (s.qkNorm !== 'none') Object.assign(attention, { qkNorm: s.qkNorm, qkNormEps: s.normEps });
  if (s.ropeScaling) attention.ropeScaling = s.ropeScaling;
  if (s.slidingWindow !== undefined) attention.slidingWindow = s.slidingWindow;
  let ffn: Cfg;
  if (s.ffn.kind === 'dense') ffn = { type: 'dense', hidden: s.ffn.hidden, activation: 'silu', glu: true, bias: s.ffn.bias };
  else {
    const f = s.ffn;
    ffn = {
      type: 'moe',
      experts: f.experts,
      capacityFactor: 0,
      router: { type: 'softmax-topk', k: f.k, renormalize: f.renormalize, balanceCoef: f.auxCoef, balanceParity: 'hf', jitterEps: f.jitter },
      expert: { type: 'glu', hidden: f.hidden, activation: 'silu' },
    };
    if (f.sharedHidden !== undefined)
      Object.assign(ffn, { shared: { type: 'glu', hidden: f.sharedHidden, activation: 'silu', count: 1 }, sharedGate: 'sigmoid' });
  }
  return {
    type: 'transformer-lm',
    vocabSize: s.vocabSize,
    dModel: s.dModel,
    contextLength: s.contextLength,
    stack: { groupSize: s.layers, repeats: 1 },
    block: { type: 'transformer', norm: 'pre', normType: rms, attention, ffn },
    outNorm: rms,
    tieEmbeddings: s.tieEmbeddings,
    embeddingStd: s.initStd,
  } as NodeSpec;
}

/** Throws the MoelabError of a failed {@link shapeFromSpec}. */
export function requireShape(r: ShapeResult, where?: string): DecoderShape {
  if (!r.ok) throw new MoelabError(r.reason, where);
  return r.shape;
}
