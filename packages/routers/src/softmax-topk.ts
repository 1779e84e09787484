/**
 * Softmax top-k router: the generic token-choice gate (Shazeer et al. 2017; Mixtral, OLMoE, Qwen2-MoE,
 * DBRX). docs/routers.md#softmax-topk, docs/routers.md#noisy-topk (arXiv 1701.06538), docs/routers.md#switch.
 *
 *   z = W x                                  W: [E, d]   (x optionally jittered: x ⊙ U(1-ε, 1+ε), training)
 *   H = z + ε ⊙ (softplus(W_noise x) + 1e-2) (learned noise, `noisy`, training only)   or   z + (σ/E)·ε (`noiseStd`)
 *   p = softmax(H)                           S = top-k(H + b)   (b: aux-loss-free bias, selection only)
 *   g_e = γ · p_e / Σ_{j∈S} p_j   if renormalize (= softmax over the selected logits), else γ · p_e  (e ∈ S)
 *
 * Renormalised top-1 makes every weight 1 and the router gets no task gradient (docs/routers.md#weighting-rules): refused.
 * Aux (training only, unscaled, pushed with their coefficients): Switch balance loss (canonical
 * "all-k ÷ k" form, options first-choice / sequence / global / HF parity, or BTX's mean-gate form
 * E·Σ_e mean_t g_t,e · mean_t p_t,e with `balanceUsage: 'gates'`), z-loss, and for noisy gating
 * Shazeer's importance and load losses (CV² of Σ gates, and of the smooth load Σ_t Φ((z - thr)/σ)).
 * With learned noise in training the metrics extras report `smoothLoadSum` = Σ_i Load_i and
 * `smoothLoadRatio` = Σ_i Load_i / (k·N) (≈ 1 when the noise is small).
 */
import {
  Config,
  defineEntry,
  editRouterLogits,
  type ForwardContext,
  Module,
  MoelabError,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  Type,
  tf,
} from '@moelab/core';
import { Balancer, type BalanceOptions, balanceFields, cvSquared, importanceLoss } from './balance.js';
import { BiasController, biasSchema, checkK, densify, gaussian, jitter, kSchema, softmaxTopKGate, topkRows } from './common.js';

export interface SoftmaxTopKOptions {
  k: number;
  renormalize: boolean;
  /** Learned Gaussian noise (Shazeer 2017): W_noise, initialised to zero. */
  noisy: boolean;
  balanceCoef: number;
  zLossCoef: number;
  balanceCounts?: BalanceOptions['balanceCounts'];
  balanceScope?: BalanceOptions['balanceScope'];
  balanceParity?: BalanceOptions['balanceParity'];
  /** Load in the balance loss: counts (Switch) or the mean sparse gate value (BTX). */
  balanceUsage?: 'counts' | 'gates';
  /** Fixed logit noise (V-MoE, Tutel): z + (noiseStd / E)·ε in training. */
  noiseStd?: number;
  /** Multiplicative input jitter ε (Switch: 1e-2). */
  jitterEps?: number;
  /** Routed scaling factor γ applied to every weight. */
  scale?: number;
  /** Shazeer's importance (CV² of Σ gates) and load losses. */
  importanceCoef?: number;
  loadCoef?: number;
  expertBias?: boolean;
  biasUpdateRate?: number;
  /** Std of the router weight init (default 1/√d). Shazeer's noisy top-k initialises W to zero: 0. */
  initStd?: number;
}

const PHI = (x: tf.Tensor) => tf.mul(0.5, tf.add(1, tf.erf(tf.div(x, Math.SQRT2))));

export class SoftmaxTopKRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly noiseWeight?: tf.Variable;
  readonly bias?: BiasController;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: SoftmaxTopKOptions,
    rng: Rng,
  ) {
    super();
    if (options.k > numExperts) throw new MoelabError(`k = ${options.k} exceeds the number of experts (${numExperts})`);
    if (options.k === 1 && options.renormalize) {
      throw new MoelabError(
        'k = 1 with renormalize makes every gate exactly 1, so the router gets no task gradient (docs/routers.md#weighting-rules); use renormalize: false (Switch)',
      );
    }
    const std = options.initStd ?? 1 / Math.sqrt(dModel);
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, std), [numExperts, dModel]);
    if (options.noisy) this.noiseWeight = this.param('noise_weight', new Float32Array(numExperts * dModel), [numExperts, dModel]);
    if (options.expertBias)
      this.bias = new BiasController(this.buffer('e_score_correction_bias', new Float32Array(numExperts), [numExperts]), options.biasUpdateRate ?? 1e-3);
    this.balancer = new Balancer({
      balanceCoef: options.balanceCoef,
      zLossCoef: options.zLossCoef,
      balanceCounts: options.balanceCounts ?? 'all',
      balanceScope: options.balanceScope ?? 'batch',
      balanceParity: options.balanceParity ?? 'canonical',
      balanceUsage: options.balanceUsage ?? 'counts',
    });
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const { k, renormalize } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const xin = jitter(x, this.options.jitterEps ?? 0, ctx);
    const logits = editRouterLogits(ctx, this.path, tf.matMul(xin, this.weight, false, true) as tf.Tensor2D);
    let noisy = logits;
    let noiseScale: tf.Tensor2D | undefined;
    if (ctx.training && this.noiseWeight) {
      noiseScale = tf.add(tf.softplus(tf.matMul(xin, this.noiseWeight, false, true)), 1e-2) as tf.Tensor2D;
      noisy = tf.add(logits, tf.mul(gaussian(ctx.rng, T, E), noiseScale)) as tf.Tensor2D;
    } else if (ctx.training && (this.options.noiseStd ?? 0) > 0) {
      noisy = tf.add(logits, gaussian(ctx.rng, T, E, this.options.noiseStd! / E)) as tf.Tensor2D;
    }
    const gate = softmaxTopKGate(noisy, k, renormalize, this.bias?.bias as tf.Tensor1D | undefined);
    const { plan, flat, choices } = gate;
    let weight = gate.weight;
    // The full distribution only where something reads it: the routing statistics, an observer of
    // the layer, or the balance loss (the fused gate does not materialise it).
    const probs = gate.probs ?? (ctx.stats !== false || ctx.moeObserver || this.balancer.needsProbs(ctx) ? (tf.softmax(noisy) as tf.Tensor2D) : undefined);
    const gates = weight;
    if ((this.options.scale ?? 1) !== 1) weight = tf.mul(weight, this.options.scale!) as tf.Tensor1D;
    this.bias?.record(plan, ctx);
    this.balancer.push(ctx, this.path, probs, plan, k, info, logits, () => densify(gates, flat, T, E));
    if (ctx.training && (this.options.importanceCoef ?? 0) > 0) {
      ctx.aux.push({ name: 'importance', layer: this.path, value: importanceLoss(densify(weight, flat, T, E)), coef: this.options.importanceCoef! });
    }
    let extra = this.bias?.stats();
    if (noiseScale && k < E) {
      const load = this.smoothLoad(logits, noisy, noiseScale, choices);
      if ((this.options.loadCoef ?? 0) > 0) ctx.aux.push({ name: 'load', layer: this.path, value: cvSquared(load), coef: this.options.loadCoef! });
      // Noisy top-k invariant: Σ_i Load_i ≈ k·N when the noise is small; reported as Σ Load and Σ Load / (k·N).
      let total = 0;
      for (const v of load.dataSync()) total += v;
      extra = { ...extra, smoothLoadSum: total, smoothLoadRatio: total / (k * Math.max(1, T)) };
    }
    return { plan, weight, probs, logits, extra };
  }

  /**
   * Shazeer's smooth load: P(t,i) = Φ((z_t,i − thr_t,i) / σ_t,i), thr = the (k+1)-th largest noisy logit
   * if i is in the top-k, else the k-th largest; Load_i = Σ_t P(t,i) (the `load` loss is CV²(Load)).
   * Returns Load [E], differentiable w.r.t. the clean logits and σ. Needs k < E.
   */
  smoothLoad(clean: tf.Tensor2D, noisy: tf.Tensor2D, sigma: tf.Tensor2D, choices: Int32Array): tf.Tensor1D {
    const [T, E] = clean.shape;
    const k = this.options.k;
    const top = topkRows(noisy.dataSync(), T, E, k + 1);
    const inTop = new Float32Array(T * E);
    const kth = new Int32Array(T);
    const k1th = new Int32Array(T);
    for (let t = 0; t < T; t++) {
      for (let s = 0; s < k; s++) inTop[t * E + choices[t * k + s]!] = 1;
      kth[t] = t * E + top[t * (k + 1) + k - 1]!;
      k1th[t] = t * E + top[t * (k + 1) + k]!;
    }
    const flatNoisy = tf.reshape(noisy, [-1]);
    const thrIn = tf.reshape(tf.gather(flatNoisy, tf.tensor1d(k1th, 'int32')), [T, 1]);
    const thrOut = tf.reshape(tf.gather(flatNoisy, tf.tensor1d(kth, 'int32')), [T, 1]);
    const isIn = tf.tensor2d(inTop, [T, E]);
    const thr = tf.add(tf.mul(isIn, thrIn), tf.mul(tf.sub(1, isIn), thrOut));
    const prob = PHI(tf.div(tf.sub(clean, thr), sigma));
    return tf.sum(prob, 0) as tf.Tensor1D;
  }

  override afterStep(): void {
    this.bias?.update();
    this.balancer.resetGlobal();
  }
}

export const softmaxTopKSchema = {
  k: kSchema(2),
  renormalize: Type.Boolean({ default: true, description: 'renormalise the k selected probabilities to sum to 1 (refused with k = 1)' }),
  noisy: Type.Boolean({ default: false, description: 'learned noisy top-k gating (Shazeer 2017; trainable noise scale, zero init)' }),
  noiseStd: Type.Number({ minimum: 0, default: 0, description: 'fixed logit noise std × E (V-MoE: 1.0 gives σ = 1/E), training only' }),
  jitterEps: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0, description: 'multiplicative input jitter ε (Switch 1e-2), training only' }),
  scale: Type.Number({ exclusiveMinimum: 0, default: 1, description: 'routed scaling factor γ multiplying every weight' }),
  ...balanceFields(0.01),
  balanceUsage: Type.Union([Type.Literal('counts'), Type.Literal('gates')], {
    default: 'counts',
    description: 'load in the balance loss: assignment counts (Switch) or the mean of the sparse gate values, with gradient (BTX)',
  }),
  zLossCoef: Type.Number({ minimum: 0, default: 0.001, description: 'router z-loss weight (ST-MoE 1e-3)' }),
  importanceCoef: Type.Number({ minimum: 0, default: 0, description: "Shazeer's importance loss weight (CV² of Σ gates; paper 0.1)" }),
  loadCoef: Type.Number({ minimum: 0, default: 0, description: "Shazeer's smooth load loss weight (needs noisy: true; paper 0.1)" }),
  ...biasSchema,
  initStd: Type.Optional(Type.Number({ minimum: 0, description: 'router init std (default 1/√d; 0 = zero init as in Shazeer 2017)' })),
};

export const softmaxTopK = defineEntry({
  kind: 'router',
  name: 'softmax-topk',
  description:
    'Softmax gate, top-k (Mixtral/OLMoE/Qwen2-MoE), renormalised or raw, optional noise, jitter, scaling, loss-free bias; Switch balance loss + z-loss.',
  reference: 'docs/routers.md#softmax-topk; arXiv 1701.06538, 2401.04088',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config(softmaxTopKSchema),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    if (c.k === 1 && c.renormalize) {
      throw new MoelabError(
        'k = 1 with renormalize: true makes every gate 1 and the router gets no task gradient; set renormalize: false (Switch)',
        `${ctx.path}.renormalize`,
      );
    }
    if (c.loadCoef > 0 && !c.noisy) throw new MoelabError('the smooth load loss needs learned noise (noisy: true)', `${ctx.path}.loadCoef`);
    if (c.balanceUsage === 'gates' && (c.balanceScope !== 'batch' || c.balanceCounts !== 'all' || c.balanceParity !== 'canonical'))
      throw new MoelabError(
        'the mean-gate balance loss is per micro-batch over all gates: leave balanceScope, balanceCounts and balanceParity at their defaults',
        `${ctx.path}.balanceUsage`,
      );
    return new SoftmaxTopKRouter(ctx.need('dModel'), E, c, ctx.rng);
  },
});

/**
 * Noisy top-k gating, Shazeer et al. 2017: learned noise, W and W_noise zero-initialised, weights =
 * softmax over the selected noisy logits, importance + load losses 0.1 each, E 16 / k 2 in the reference.
 */
export const noisyTopK = defineEntry({
  kind: 'router',
  name: 'noisy-topk',
  description: 'Noisy top-k gating (Shazeer 2017): learned Gaussian noise, zero init, softmax over the selected, importance + load losses (0.1 each).',
  reference: 'docs/routers.md#noisy-topk; arXiv 1701.06538',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: kSchema(2),
    importanceCoef: Type.Number({ minimum: 0, default: 0.1, description: 'importance loss weight (Table 6 balanced setting: 0.1)' }),
    loadCoef: Type.Number({ minimum: 0, default: 0.1, description: 'load loss weight (0.1)' }),
    zeroInit: Type.Boolean({ default: true, description: 'W_g = W_noise = 0 at init (reference code)' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    if (c.k === 1)
      throw new MoelabError(
        'noisy top-k with k = 1 renormalises a single gate to 1: no task gradient reaches the router (Shazeer argued k ≥ 2)',
        `${ctx.path}.k`,
      );
    return new SoftmaxTopKRouter(
      ctx.need('dModel'),
      E,
      {
        k: c.k,
        renormalize: true,
        noisy: true,
        balanceCoef: 0,
        zLossCoef: 0,
        importanceCoef: c.importanceCoef,
        loadCoef: c.loadCoef,
        initStd: c.zeroInit ? 0 : undefined,
      },
      ctx.rng,
    );
  },
});

/**
 * Switch Transformer top-1 (arXiv 2101.03961): x jittered by U(1-ε, 1+ε) (ε 1e-2), p = softmax(W x), e* = argmax p,
 * weight = raw p_e* (never renormalised), Switch loss α = 1e-2. Init N(0, 0.1/d) (Switch's 10× smaller scale).
 * Capacity / drops are options of the `moe` layer (capacityFactor 1.25 train, evalCapacityFactor 2.0).
 */
export const switchTop1 = defineEntry({
  kind: 'router',
  name: 'switch',
  description: 'Switch Transformer top-1: raw softmax weight of the argmax expert, input jitter 1e-2, Switch balance loss 1e-2.',
  reference: 'docs/routers.md#switch; arXiv 2101.03961',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    jitterEps: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0.01, description: 'multiplicative input jitter' }),
    balanceCoef: Type.Number({ minimum: 0, default: 0.01, description: 'Switch load-balancing loss α' }),
    zLossCoef: Type.Number({ minimum: 0, default: 0, description: 'z-loss (ST-MoE recipe: 1e-3)' }),
    initScale: Type.Number({ exclusiveMinimum: 0, default: 0.1, description: 'init std = sqrt(initScale / d) (Switch: 0.1)' }),
  }),
  create: (c, ctx) =>
    new SoftmaxTopKRouter(
      ctx.need('dModel'),
      ctx.need('numExperts'),
      {
        k: 1,
        renormalize: false,
        noisy: false,
        balanceCoef: c.balanceCoef,
        zLossCoef: c.zLossCoef,
        jitterEps: c.jitterEps,
        initStd: Math.sqrt(c.initScale / ctx.need('dModel')),
      },
      ctx.rng,
    ),
});

/**
 * HF parity presets of `softmax-topk`: Mixtral (E 8, k 2, renormalised, aux 0.001 in the HF ×k form),
 * OLMoE (E 64, k 8, raw, aux 0.01 in the HF ×k form) and Qwen2-MoE (E 60, k 4, raw (norm_topk_prob
 * false), aux 0.001 in the HF ×k form). `balanceParity: 'hf'` multiplies the canonical loss by k, so the
 * published coefficients keep their meaning (docs/routers.md#switch-load-balancing-loss). Qwen2-MoE's sigmoid-gated shared expert belongs to
 * the layer: `{ type: 'moe', router: 'qwen2-moe', shared: {...}, sharedGate: 'sigmoid' }`.
 */
function hfPreset(name: string, description: string, k: number, renormalize: boolean, coef: number) {
  return defineEntry({
    kind: 'router',
    name,
    description,
    reference: `docs/routers.md#${name}`,
    flags: { causalSafe: true, batchDependent: false },
    schema: Config({
      k: kSchema(k),
      balanceCoef: Type.Number({ minimum: 0, default: coef, description: 'aux loss coefficient in the HF (×k) convention' }),
      jitterEps: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0, description: 'router_jitter_noise (input jitter), training only' }),
    }),
    create: (c, ctx) => {
      const E = ctx.need('numExperts');
      checkK(c.k, E, ctx.path);
      if (c.k === 1 && renormalize) throw new MoelabError('k = 1 with renormalised weights makes every gate 1 (no task gradient)', `${ctx.path}.k`);
      return new SoftmaxTopKRouter(
        ctx.need('dModel'),
        E,
        { k: c.k, renormalize, noisy: false, balanceCoef: c.balanceCoef, zLossCoef: 0, balanceParity: 'hf', jitterEps: c.jitterEps },
        ctx.rng,
      );
    },
  });
}

export const mixtralRouter = hfPreset('mixtral', 'Mixtral router (HF): softmax top-2, renormalised, aux loss 0.001 in the HF ×k form.', 2, true, 0.001);
export const olmoeRouter = hfPreset(
  'olmoe',
  'OLMoE router (HF): softmax top-8, raw weights (norm_topk_prob false), aux loss 0.01 in the HF ×k form.',
  8,
  false,
  0.01,
);
export const qwen2MoERouter = hfPreset(
  'qwen2-moe',
  "Qwen2-MoE router (HF): softmax top-4, raw weights (norm_topk_prob false), aux loss 0.001 in the HF ×k form; pair with the moe layer's shared + sharedGate: 'sigmoid'.",
  4,
  false,
  0.001,
);
