/**
 * MoA — Mixture of Attention Heads (Zhang, Shen, Huang, Zhou, Rong, Xiong, EMNLP 2022, arXiv 2210.05144;
 * official code github.com/yikangshen/MoA). E head experts, each a query projection W_q^e [d, d_h] and an
 * output projection W_o^e [d_h, d]; ONE key and ONE value projection shared by every expert (a single K/V
 * head, as in multi-query attention); a softmax router picks k experts per token:
 *
 *   logits = x W_g  (+ ε ⊙ (softplus(x W_noise) + 0.01) in training when noisy)      W_g [d, E]
 *   p = softmax(logits);   S = TopK(p, k);   w_e = p_e for e ∈ S (raw, or renormalised over S)
 *   K = x W_kᵀ,  V = x W_vᵀ                                                            W_k, W_v [d_h, d]
 *   o_{t,e} = softmax_s( (x_t W_q^e) · K_s / √d_h + M_ts ) V_s                         causal mask M
 *   y_t = Σ_{e∈S} w_e · o_{t,e} W_o^e
 *
 * Auxiliary losses (training), each with its coefficient (router.aux): cv = CV² of the L1-normalised
 * per-expert sum of the sparse gates (unbiased variance); switch = E · Σ_e P̂_e f̂_e with P̂ the L1-normalised
 * sum of probabilities and f̂ the L1-normalised selection counts; z = mean_t (log Σ_e exp logits_te)².
 * `sampleTopk = m` (training) takes the top k − m and samples m more from the remaining probabilities.
 * Parameter names and layouts are the official ones: `q_proj.w_gate [d, E]`, `q_proj.w_noise [d, E]`,
 * `q_proj.experts.w [E, d, d_h]`, `q_proj.output_experts.w [E, d_h, d]`, `k_proj.weight`, `v_proj.weight`
 * [d_h, d]. Init: router zeros, experts Xavier-uniform per expert, K/V Xavier-uniform with gain 1/√2.
 * The official layer has no rotary positions (`rope: true` rotates queries and the key by position).
 *
 * Implementation: the selected (token, expert) pairs are k query "slots" per token, computed with core's
 * expert-selected linear map (a fused kernel where the backend has one); the shared K/V head is repeated
 * for the k slots and all slots go through one causal-attention call; the output experts map the slots
 * back with the gate weights.
 */
import {
  applyRope,
  type AttentionModule,
  type AttentionSources,
  assertInference,
  cachedCausalAttention,
  type KVCache,
  attentionMixingFlops,
  Config,
  causalMixingMacs,
  defineEntry,
  type ForwardContext,
  flatten2d,
  Module,
  MoelabError,
  mergeHeads,
  moeLinear,
  type Rng,
  splitHeads,
  Type,
  tf,
} from '@moelab/core';
import { expandKvHeads, gatherKvHeads, mergedCausalAttention, ParamGroup } from './common.js';

export interface MoAOptions {
  experts: number;
  k: number;
  headDim: number;
  rope: boolean;
  ropeBase: number;
  weighting: 'raw' | 'renormalise';
  noisy: boolean;
  sampleTopk: number;
  aux: { cv: number; switch: number; z: number };
  /** Router init: 0 = zeros (official), otherwise the std of a normal init. */
  routerStd: number;
}

/** Xavier-uniform bound √(6 / (fan_in + fan_out)) · gain. */
const xavier = (fanIn: number, fanOut: number, gain = 1) => gain * Math.sqrt(6 / (fanIn + fanOut));

export class MixtureOfAttentionHeads extends Module implements AttentionModule {
  readonly gate: ParamGroup;
  readonly queryExperts: ParamGroup;
  readonly outputExperts: ParamGroup;
  readonly kProj: ParamGroup;
  readonly vProj: ParamGroup;

  constructor(
    readonly dModel: number,
    readonly options: MoAOptions,
    rng: Rng,
  ) {
    super();
    const { experts: E, k, headDim: dh } = options;
    const d = dModel;
    if (k > E) throw new MoelabError(`k = ${k} exceeds the number of experts (${E})`);
    if (options.sampleTopk > k) throw new MoelabError(`sampleTopk = ${options.sampleTopk} exceeds k = ${k}`);
    this.gate = this.child('q_proj', new ParamGroup());
    this.gate.add('w_gate', options.routerStd > 0 ? rng.normalArray(d * E, options.routerStd) : new Float32Array(d * E), [d, E]);
    if (options.noisy) this.gate.add('w_noise', new Float32Array(d * E), [d, E]);
    this.queryExperts = this.gate.addChild('experts', new ParamGroup());
    const bq = xavier(d, dh);
    this.queryExperts.add('w', rng.uniformArray(E * d * dh, -bq, bq), [E, d, dh]);
    this.outputExperts = this.gate.addChild('output_experts', new ParamGroup());
    this.outputExperts.add('w', rng.uniformArray(E * dh * d, -bq, bq), [E, dh, d]);
    const bkv = xavier(d, dh, 1 / Math.SQRT2);
    this.kProj = this.child('k_proj', new ParamGroup());
    this.kProj.add('weight', rng.uniformArray(dh * d, -bkv, bkv), [dh, d]);
    this.vProj = this.child('v_proj', new ParamGroup());
    this.vProj.add('weight', rng.uniformArray(dh * d, -bkv, bkv), [dh, d]);
  }

  /** Router logits [N, E] of `x` (noisy in training when enabled). */
  logits(x: tf.Tensor, ctx: ForwardContext): tf.Tensor2D {
    const x2 = flatten2d(x);
    const clean = tf.matMul(x2, this.gate.get('w_gate')) as tf.Tensor2D;
    if (!(this.options.noisy && ctx.training)) return clean;
    const std = tf.add(tf.softplus(tf.matMul(x2, this.gate.get('w_noise'))), 0.01);
    return tf.add(clean, tf.mul(tf.tensor(ctx.rng.normalArray(clean.size), clean.shape), std)) as tf.Tensor2D;
  }

  /** The k experts of each token [N·k], in slot order (deterministic top-k, plus sampled slots in training). */
  private select(p: Float32Array, rows: number, ctx: ForwardContext): Int32Array {
    const { experts: E, k, sampleTopk } = this.options;
    const m = ctx.training ? sampleTopk : 0;
    const out = new Int32Array(rows * k);
    const order = Array.from({ length: E }, (_, e) => e);
    for (let n = 0; n < rows; n++) {
      const row = p.subarray(n * E, (n + 1) * E);
      // Stable descending sort: ties go to the lower index, as torch.topk does on CPU.
      const sorted = order.slice().sort((a, b) => row[b]! - row[a]! || a - b);
      for (let j = 0; j < k - m; j++) out[n * k + j] = sorted[j]!;
      if (m > 0) {
        const left = sorted.slice(k - m);
        const w = left.map((e) => row[e]! + 1e-6);
        for (let j = k - m; j < k; j++) {
          let r = ctx.rng.next() * w.reduce((a, b) => a + b, 0);
          let pick = w.length - 1;
          for (let i = 0; i < w.length; i++) {
            r -= w[i]!;
            if (r <= 0) {
              pick = i;
              break;
            }
          }
          out[n * k + j] = left[pick]!;
          left.splice(pick, 1);
          w.splice(pick, 1);
        }
      }
    }
    return out;
  }

  /**
   * The routed halves shared by both paths: each token's k chosen experts, its query slots q [B, T, k·dh]
   * (before any rotation) and `output(slots [B, T, k·dh])` -> [B, T, d] (output experts weighted by the
   * gates). Adds the auxiliary losses in training and records the routing statistics.
   */
  private route(qSrc: tf.Tensor, ctx: ForwardContext): { q: tf.Tensor; output: (slots: tf.Tensor) => tf.Tensor } {
    const { experts: E, k, headDim: dh } = this.options;
    const [B, T] = qSrc.shape as [number, number];
    const rows = B * T;
    const logits = this.logits(qSrc, ctx);
    const probs = tf.softmax(logits) as tf.Tensor2D;
    const chosen = this.select(probs.dataSync() as Float32Array, rows, ctx);
    const tokenRow = new Int32Array(rows * k);
    const slotRow = new Int32Array(rows * k);
    const flat = new Int32Array(rows * k);
    for (let n = 0; n < rows; n++)
      for (let j = 0; j < k; j++) {
        tokenRow[n * k + j] = n;
        slotRow[n * k + j] = n * k + j;
        flat[n * k + j] = n * E + chosen[n * k + j]!;
      }
    let gate = tf.gather(tf.reshape(probs, [-1]), tf.tensor1d(flat, 'int32')) as tf.Tensor1D;
    if (this.options.weighting === 'renormalise') gate = tf.reshape(tf.div(tf.reshape(gate, [rows, k]), tf.sum(tf.reshape(gate, [rows, k]), 1, true)), [-1]);
    if (ctx.training) this.addAux(ctx, logits, probs, chosen);
    this.record(ctx, probs, chosen);
    const q = tf.reshape(moeLinear(flatten2d(qSrc), this.queryExperts.get('w') as tf.Tensor3D, tokenRow, slotRow, chosen, null, rows * k), [B, T, k * dh]);
    const output = (slots: tf.Tensor) =>
      tf.reshape(
        moeLinear(tf.reshape(slots, [rows * k, dh]) as tf.Tensor2D, this.outputExperts.get('w') as tf.Tensor3D, slotRow, tokenRow, chosen, gate, rows),
        [B, T, this.dModel],
      );
    return { q, output };
  }

  /** The shared key or value head [B, T, dh] of `src` [B, T, d]. */
  private kv(src: tf.Tensor, which: 'k' | 'v'): tf.Tensor {
    const [B, T] = src.shape as [number, number];
    const w = (which === 'k' ? this.kProj : this.vProj).get('weight');
    return tf.reshape(tf.matMul(flatten2d(src), w, false, true), [B, T, this.options.headDim]);
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: AttentionSources = {}): tf.Tensor {
    const { k, headDim: dh } = this.options;
    const qSrc = sources.q ?? x;
    const { q, output } = this.route(qSrc, ctx);
    const K = expandKvHeads(this.kv(sources.k ?? x, 'k'), k, 1, 1, true);
    const V = expandKvHeads(this.kv(sources.v ?? x, 'v'), k, 1, 1, true);
    const ropeDims = this.options.rope ? dh : 0;
    return output(mergedCausalAttention(q, K, V, k, ropeDims, this.options.ropeBase)); // slots [B, T, k·dh]
  }

  /**
   * Cached decoding (inference): one key and one value head are cached ([B, 1, T, dh], the key rotated at
   * its position when `rope`), the size of a multi-query attention's cache; each new row's k query slots
   * attend to every cached position.
   */
  forwardCached(x: tf.Tensor, ctx: ForwardContext, cache: KVCache, sources: AttentionSources = {}): tf.Tensor {
    assertInference(ctx, this.path);
    const { k, headDim: dh } = this.options;
    const qSrc = sources.q ?? x;
    const n0 = cache.length;
    const ropeDims = this.options.rope ? dh : 0;
    const { q, output } = this.route(qSrc, ctx);
    const all = cache.append({
      k: applyRope(splitHeads(this.kv(sources.k ?? x, 'k'), 1), ropeDims, this.options.ropeBase, n0),
      v: splitHeads(this.kv(sources.v ?? x, 'v'), 1),
    });
    const slotHeads = (t: tf.Tensor) => gatherKvHeads(t, k, 1, 1, true);
    const res = cachedCausalAttention(applyRope(splitHeads(q, k), ropeDims, this.options.ropeBase, n0), slotHeads(all.k), slotHeads(all.v));
    return output(mergeHeads(res));
  }

  /** The unweighted auxiliary losses of one call (cv, switch, z), as the official code computes them. */
  auxLosses(logits: tf.Tensor2D, probs: tf.Tensor2D, chosen: Int32Array): { cv: tf.Scalar; switch: tf.Scalar; z: tf.Scalar } {
    const E = this.options.experts;
    const rows = probs.shape[0];
    const mask = new Float32Array(rows * E);
    const counts = new Float32Array(E);
    const k = chosen.length / rows;
    for (let n = 0; n < rows; n++)
      for (let j = 0; j < k; j++) {
        const e = chosen[n * k + j]!;
        mask[n * E + e] = 1;
        counts[e]! += 1;
      }
    const l1 = (t: tf.Tensor) => tf.div(t, tf.maximum(tf.sum(tf.abs(t)), 1e-12));
    const gates = tf.mul(probs, tf.tensor2d(mask, [rows, E]));
    const s = l1(tf.sum(gates, 0));
    const cv = E === 1 ? tf.scalar(0) : tf.div(tf.div(tf.sum(tf.square(tf.sub(s, tf.mean(s)))), E - 1), tf.add(tf.square(tf.mean(s)), 1e-10));
    const sw = tf.mul(tf.sum(tf.mul(l1(tf.sum(probs, 0)), l1(tf.tensor1d(counts)))), E);
    const z = tf.mean(tf.square(tf.logSumExp(logits, 1)));
    return { cv: cv as tf.Scalar, switch: sw as tf.Scalar, z: z as tf.Scalar };
  }

  private addAux(ctx: ForwardContext, logits: tf.Tensor2D, probs: tf.Tensor2D, chosen: Int32Array): void {
    const coef = this.options.aux;
    if (coef.cv === 0 && coef.switch === 0 && coef.z === 0) return;
    const a = this.auxLosses(logits, probs, chosen);
    if (coef.cv !== 0) ctx.aux.push({ name: 'moa_cv', layer: this.path, value: a.cv, coef: coef.cv });
    if (coef.switch !== 0) ctx.aux.push({ name: 'moa_switch', layer: this.path, value: a.switch, coef: coef.switch });
    if (coef.z !== 0) ctx.aux.push({ name: 'moa_z', layer: this.path, value: a.z, coef: coef.z });
  }

  private record(ctx: ForwardContext, probs: tf.Tensor2D, chosen: Int32Array): void {
    const E = this.options.experts;
    const rows = probs.shape[0];
    const p = probs.dataSync();
    const counts = new Array<number>(E).fill(0);
    for (const e of chosen) counts[e]! += 1;
    let h = 0;
    for (let i = 0; i < p.length; i++) if (p[i]! > 0) h -= p[i]! * Math.log(p[i]!);
    const total = chosen.length || 1;
    ctx.routing.push({
      layer: this.path,
      numExperts: E,
      tokens: rows,
      counts,
      load: counts.map((c) => c / total),
      dropRate: 0,
      entropy: h / Math.max(1, rows),
      expertsPerToken: this.options.k,
    });
  }

  private get routerParams(): number {
    return this.gate.params.get('w_gate')!.size + (this.gate.params.get('w_noise')?.size ?? 0);
  }

  /** Router, shared K/V, and k experts' query and output projections per token. */
  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    for (const m of this.modules()) seen.add(m);
    const { k, headDim: dh } = this.options;
    return this.routerParams + 2 * dh * this.dModel + 2 * k * this.dModel * dh;
  }

  override macsPerToken(seqLen: number): number {
    const { k, headDim: dh } = this.options;
    return this.activeParameterCount() + causalMixingMacs(k, dh, seqLen);
  }

  /** 2 FLOPs per active weight (router, K, V, k query and output experts) and 2 · n_ctx · k · d_h of mixing. */
  override flopsPerToken(seqLen: number): number {
    const { k, headDim: dh } = this.options;
    return 2 * this.activeParameterCount() + attentionMixingFlops(k, dh, seqLen);
  }
}

export const moa = defineEntry({
  kind: 'attention',
  name: 'moa',
  description: 'MoA: top-k of E attention-head experts (query + output projection each) sharing one K/V head; softmax router with cv/switch/z losses.',
  reference: 'docs/attention-moe.md; MoA arXiv 2210.05144, github.com/yikangshen/MoA',
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 8, description: 'head experts E (official WMT14 script: 8; architecture default 12)' }),
    k: Type.Integer({ minimum: 1, default: 4, description: 'heads per token (the official "attention heads" argument)' }),
    headDim: Type.Optional(Type.Integer({ minimum: 1, description: 'd_h of every head and of the shared K/V; default dModel / k' })),
    rope: Type.Boolean({ default: false, description: 'rotary positions on queries and the shared key (the official layer has none)' }),
    ropeBase: Type.Number({ exclusiveMinimum: 0, default: 10000 }),
    router: Type.Object(
      {
        weighting: Type.Union([Type.Literal('raw'), Type.Literal('renormalise')], {
          default: 'raw',
          description: 'raw = the selected softmax probabilities (official); renormalise = divided by their sum',
        }),
        noisy: Type.Boolean({ default: false, description: 'noisy gating in training (adds q_proj.w_noise)' }),
        sampleTopk: Type.Integer({ minimum: 0, default: 0, description: 'training: sample this many of the k slots from the remaining probabilities' }),
        aux: Type.Object(
          {
            cv: Type.Number({ minimum: 0, default: 0 }),
            switch: Type.Number({ minimum: 0, default: 0.01 }),
            z: Type.Number({ minimum: 0, default: 0.001 }),
          },
          { additionalProperties: false, default: {} },
        ),
      },
      { additionalProperties: false, default: {} },
    ),
    routerInit: Type.Union(
      [Type.Literal('zeros'), Type.Object({ dist: Type.Literal('normal'), std: Type.Number({ minimum: 0 }) }, { additionalProperties: false })],
      { default: 'zeros', description: 'zeros (official: uniform at step 0, ties broken by index) or a normal init' },
    ),
  }),
  create: (c, ctx) => {
    const d = ctx.need('dModel');
    if (c.k > c.experts) throw new MoelabError(`k = ${c.k} exceeds the number of experts (${c.experts})`, `${ctx.path}.k`);
    if (c.router.sampleTopk > c.k) throw new MoelabError(`sampleTopk = ${c.router.sampleTopk} exceeds k = ${c.k}`, `${ctx.path}.router.sampleTopk`);
    if (c.headDim === undefined && d % c.k !== 0) throw new MoelabError(`dModel ${d} is not divisible by k ${c.k}; set headDim`, `${ctx.path}.k`);
    const init = c.routerInit as 'zeros' | { dist: 'normal'; std: number };
    return new MixtureOfAttentionHeads(
      d,
      {
        experts: c.experts,
        k: c.k,
        headDim: c.headDim ?? d / c.k,
        rope: c.rope,
        ropeBase: c.ropeBase,
        weighting: c.router.weighting,
        noisy: c.router.noisy,
        sampleTopk: c.router.sampleTopk,
        aux: c.router.aux,
        routerStd: init === 'zeros' ? 0 : init.std,
      },
      ctx.rng,
    );
  },
});
