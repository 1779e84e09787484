/**
 * SwitchHead attention (Csordás et al. 2023), as used by MoEUT (RoPE variant; docs/moeut.md#switchhead-attention, arXiv 2312.07987).
 * Queries and keys are dense; values and outputs are experts chosen per head by sigmoid gates:
 *
 *   q = (q_src Wq^T)·dh^-¼,  k = (k_src Wk^T)·dh^-¼                  then RoPE on the first n_rot channels
 *   v[h]   = Σ_{e ∈ top-K σ(k_src sel_v^T)[h]} σ(·)_e · v_src v[h·E+e]          (value experts, from k_src)
 *   res    = softmax(q k^T + causal) v                                           (no extra 1/√dh)
 *   out    = Σ_h Σ_{e ∈ top-K σ(q_src sel_o^T)[h]} σ(·)_e · res[h] o[h·E+e]      (output experts, from q_src)
 *
 * `experts: 1` is the dense-gated case: v [H·dh, d], o [d, H·dh] (Linear layout) and a sigmoid gate per
 * head, out = concat_h(σ(q_src sel_o^T)_h · res[h]) o^T, with no regulariser.
 * RoPE: n_rot = floor(rotateFraction·dh) rounded down to even, rotate-half pairing, base 10000.
 * Regulariser (docs/moeut.md#the-entropy-regulariser): in training, the raw logits of every call are kept; once per forward pass
 * (`finalizeForward`) reg_o and reg_v = -mean_{b,h} H(mean over time × repeats of softmax over E), each added
 * with `balanceCoef` (MoEUT δ = 0.001) as aux losses `att_entropy_o` / `att_entropy_v`.
 * Parameter names are the official ones: `q.weight`, `k.weight`, `v`, `o`, `sel_v`, `sel_o`.
 * Init: sel_* ~ N(0,(s/√d)²) then rows renormalised, q, k, v ~ N(0,(s/√d)²), o ~ N(0,(s/√(H·dh))²),
 * s = `initScale`, by default √(2/L) with L the unrolled depth.
 * The expert projections use core's `moeLinear` op (a backend's fused kernel when registered).
 */
import {
  type AttentionModule,
  type AttentionSources,
  appendAndAttend,
  assertInference,
  Config,
  causalAttention,
  causalMixingMacs,
  defineEntry,
  dropout,
  ensureCarry,
  entropyBalanceReg,
  type ForwardContext,
  flatten2d,
  fusedCausalAttention,
  hasFusedAttention,
  type KVCache,
  Linear,
  Module,
  MoelabError,
  mergeHeads,
  moeLinear,
  privateCarryKey,
  readCarry,
  type Rng,
  applyRope,
  attentionMixingFlops,
  splitHeads,
  takeCarry,
  Type,
  tf,
} from '@moelab/core';

export interface SwitchHeadOptions {
  heads: number;
  headDim: number;
  /** Experts per head (1 = dense attention with a sigmoid output gate per head). */
  experts: number;
  k: number;
  rotateFraction: number;
  ropeBase: number;
  /** Dropout on q (training only). */
  dropout: number;
  /** Probability of masking each (token, head, expert) before the top-k choice (gates stay unmasked). */
  expertDropout: number;
  balance: 'sequence' | 'none';
  balanceCoef: number;
  initScale: number;
}

/** `renorm_rows` of the official SwitchHead: row r ends with norm ∝ its original std; the global std is that of the normalised matrix rescaled. */
export function renormRows(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const rowStd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    let n = 0;
    for (let c = 0; c < cols; c++) {
      m += w[r * cols + c]!;
      n += w[r * cols + c]! ** 2;
    }
    m /= cols;
    let s = 0;
    for (let c = 0; c < cols; c++) s += (w[r * cols + c]! - m) ** 2;
    rowStd[r] = Math.sqrt(s / Math.max(1, cols - 1));
    n = Math.sqrt(n) || 1;
    for (let c = 0; c < cols; c++) out[r * cols + c] = w[r * cols + c]! / n;
  }
  let m = 0;
  for (const v of out) m += v;
  m /= out.length;
  let s = 0;
  for (const v of out) s += (v - m) ** 2;
  const g = Math.sqrt(s / Math.max(1, out.length - 1)) || 1;
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c]! *= rowStd[r]! / g;
  return out;
}

/** Per-head expert choice of one projection: assignment lists in (token, head, slot) order and the differentiable gates. */
interface Selection {
  /** Raw logits [B, T, H, E]. */
  logits: tf.Tensor4D;
  /** Row n·H + h for each assignment. */
  headRow: Int32Array;
  /** Token row n for each assignment. */
  tokenRow: Int32Array;
  /** Expert h·E + e for each assignment. */
  expert: Int32Array;
  gate: tf.Tensor1D;
}

export class SwitchHead extends Module implements AttentionModule {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: tf.Variable;
  readonly o: tf.Variable;
  readonly selV?: tf.Variable;
  readonly selO: tf.Variable;
  /** Channels of each head rotated by RoPE. */
  readonly nRotate: number;
  /** Where this module keeps the selection logits of its calls in the current forward pass (training only), for the regularisers. */
  private readonly callsKey = privateCarryKey<{ o: tf.Tensor4D[]; v: tf.Tensor4D[] }>('switchhead');

  constructor(
    readonly dModel: number,
    readonly options: SwitchHeadOptions,
    rng: Rng,
  ) {
    super();
    const { heads: H, headDim: dh, experts: E, initScale: s } = options;
    const d = dModel;
    if (E > 1 && options.k > E) throw new MoelabError(`k = ${options.k} exceeds the number of experts per head (${E})`);
    const nr = Math.floor(options.rotateFraction * dh);
    this.nRotate = nr - (nr % 2);
    const stdIn = s / Math.sqrt(d);
    // The official creation order: sel_v, sel_o, k, q, v, o (any order would do; names are what matter).
    if (E > 1) this.selV = this.param('sel_v', renormRows(rng.normalArray(H * E * d, stdIn), H * E, d), [H * E, d]);
    this.selO = this.param('sel_o', renormRows(rng.normalArray(H * E * d, stdIn), H * E, d), [H * E, d]);
    this.k = this.child('k', new Linear(d, H * dh, rng, { std: stdIn }));
    this.q = this.child('q', new Linear(d, H * dh, rng, { std: stdIn }));
    const stdO = s / Math.sqrt(H * dh);
    if (E > 1) {
      this.v = this.param('v', rng.normalArray(H * E * d * dh, stdIn), [H * E, d, dh]);
      this.o = this.param('o', rng.normalArray(H * E * dh * d, stdO), [H * E, dh, d]);
    } else {
      this.v = this.param('v', rng.normalArray(H * dh * d, stdIn), [H * dh, d]);
      this.o = this.param('o', rng.normalArray(d * H * dh, stdO), [d, H * dh]);
    }
  }

  /** Raw per-head selection logits [B, T, H, E] of `src` [B, T, d] for the value (`v`) or output (`o`) experts. */
  selectionLogits(src: tf.Tensor, which: 'v' | 'o'): tf.Tensor4D {
    const w = which === 'v' ? this.selV : this.selO;
    if (!w) throw new MoelabError('dense-gated SwitchHead (experts: 1) has no value router');
    const [B, T] = src.shape as [number, number];
    return tf.reshape(tf.matMul(flatten2d(src), w, false, true), [B, T, this.options.heads, this.options.experts]) as tf.Tensor4D;
  }

  private select(src: tf.Tensor, which: 'v' | 'o', ctx: ForwardContext): Selection {
    const { heads: H, experts: E, k: K, expertDropout } = this.options;
    const logits = this.selectionLogits(src, which);
    const [B, T] = logits.shape;
    const N = B * T;
    const gates = tf.sigmoid(logits);
    let choose: tf.Tensor = logits;
    let dropped: Uint8Array | undefined;
    if (ctx.training && expertDropout > 0) {
      dropped = new Uint8Array(N * H * E);
      for (let i = 0; i < dropped.length; i++) dropped[i] = ctx.rng.next() < expertDropout ? 1 : 0;
      choose = tf.where(tf.tensor(dropped, logits.shape, 'bool'), tf.fill(logits.shape, Number.NEGATIVE_INFINITY), logits);
    }
    const idx = tf.topk(choose, K).indices.dataSync() as Int32Array;
    const headRow: number[] = [];
    const tokenRow: number[] = [];
    const expert: number[] = [];
    const flat: number[] = [];
    for (let n = 0; n < N; n++)
      for (let h = 0; h < H; h++)
        for (let j = 0; j < K; j++) {
          const e = idx[(n * H + h) * K + j]!;
          const pos = (n * H + h) * E + e;
          if (dropped?.[pos]) continue;
          headRow.push(n * H + h);
          tokenRow.push(n);
          expert.push(h * E + e);
          flat.push(pos);
        }
    const gate = tf.gather(tf.reshape(gates, [-1]), tf.tensor1d(Int32Array.from(flat), 'int32')) as tf.Tensor1D;
    return { logits, headRow: Int32Array.from(headRow), tokenRow: Int32Array.from(tokenRow), expert: Int32Array.from(expert), gate };
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: AttentionSources = {}): tf.Tensor {
    const qSrc = sources.q ?? x;
    const kSrc = sources.k ?? x;
    const vSrc = sources.v ?? x;
    const { heads: H, headDim: dh } = this.options;
    const [B, T] = qSrc.shape as [number, number];
    // The backend's fused kernels on the projections' [B, T, H*dh] layout (no head transposes),
    // unless dropout is active: its mask is drawn in the [B, H, T, dh] order on every backend.
    const fused = hasFusedAttention(this.nRotate) && !(ctx.training && this.options.dropout > 0);
    const heads = (t: tf.Tensor) => (fused ? t : splitHeads(t, H));
    const scale = dh ** -0.25;
    let q = heads(tf.mul(this.q.forward(qSrc), scale));
    let k = heads(tf.mul(this.k.forward(kSrc), scale));
    q = dropout(q, this.options.dropout, ctx.rng, ctx.training);
    const { v, output } = this.routed(qSrc, kSrc, vSrc, ctx);

    let res: tf.Tensor; // [B, T, H, dh]
    if (fused) {
      res = tf.reshape(fusedCausalAttention(q, k, heads(v), H, this.nRotate, this.options.ropeBase, 1), [B, T, H, dh]);
    } else {
      if (this.nRotate > 0) {
        q = applyRope(q, this.nRotate, this.options.ropeBase);
        k = applyRope(k, this.nRotate, this.options.ropeBase);
      }
      res = tf.transpose(causalAttention(q, k, heads(v), 1), [0, 2, 1, 3]);
    }
    return output(res);
  }

  /**
   * The new rows at positions n0 = cache.length ..: q, k projected and rotated at their own positions,
   * the value experts chosen from each new row's k source and the output experts from its q source
   * (routing is per token, so earlier rows' choices never change), k and the mixed values appended to
   * the cache ([B, H, T, dh] entries "k", "v"), attention over all cached positions (appendAndAttend).
   */
  forwardCached(x: tf.Tensor, ctx: ForwardContext, cache: KVCache, sources: AttentionSources = {}): tf.Tensor {
    assertInference(ctx, this.path);
    const qSrc = sources.q ?? x;
    const kSrc = sources.k ?? x;
    const vSrc = sources.v ?? x;
    const { heads: H, headDim: dh } = this.options;
    const n0 = cache.length;
    const scale = dh ** -0.25;
    const q = applyRope(splitHeads(tf.mul(this.q.forward(qSrc), scale), H), this.nRotate, this.options.ropeBase, n0);
    const k = applyRope(splitHeads(tf.mul(this.k.forward(kSrc), scale), H), this.nRotate, this.options.ropeBase, n0);
    const { v, output } = this.routed(qSrc, kSrc, vSrc, ctx);
    const res = mergeHeads(appendAndAttend(cache, q, k, splitHeads(v, H), 1)); // [B, m, H*dh]
    const [B, m] = qSrc.shape as [number, number];
    return output(tf.reshape(res, [B, m, H, dh]));
  }

  /**
   * The routed halves shared by both paths: the values v [B, T, H*dh] (value experts of each row's
   * k source, or the dense projection) and `output(res [B, T, H, dh])` (output experts of each row's
   * q source, or the per-head gate and dense projection) -> [B, T, d].
   */
  private routed(qSrc: tf.Tensor, kSrc: tf.Tensor, vSrc: tf.Tensor, ctx: ForwardContext): { v: tf.Tensor; output: (res: tf.Tensor) => tf.Tensor } {
    const { heads: H, headDim: dh, experts: E } = this.options;
    const [B, T] = qSrc.shape as [number, number];
    const N = B * T;
    if (E > 1) {
      const vSel = this.select(kSrc, 'v', ctx);
      const oSel = this.select(qSrc, 'o', ctx);
      if (ctx.training && this.options.balance !== 'none' && this.options.balanceCoef !== 0) this.record(ctx, oSel.logits, vSel.logits);
      // Value experts: row n of v_src -> row n·H + h of the per-head values.
      const vh = moeLinear(flatten2d(vSrc), this.v as tf.Tensor3D, vSel.tokenRow, vSel.headRow, vSel.expert, vSel.gate, N * H);
      const output = (res: tf.Tensor) => {
        const out = moeLinear(tf.reshape(res, [N * H, dh]) as tf.Tensor2D, this.o as tf.Tensor3D, oSel.headRow, oSel.tokenRow, oSel.expert, oSel.gate, N);
        return tf.reshape(out, [B, T, this.dModel]);
      };
      return { v: tf.reshape(vh, [B, T, H * dh]), output };
    }
    const oGate = tf.sigmoid(tf.reshape(tf.matMul(flatten2d(qSrc), this.selO, false, true), [B, T, H, 1]));
    const v = tf.reshape(tf.matMul(flatten2d(vSrc), this.v, false, true), [B, T, H * dh]);
    const output = (res: tf.Tensor) => {
      const gated = tf.reshape(tf.mul(res, oGate), [N, H * dh]);
      return tf.reshape(tf.matMul(gated, this.o, false, true), [B, T, this.dModel]);
    };
    return { v, output };
  }

  private record(ctx: ForwardContext, o: tf.Tensor4D, v: tf.Tensor4D): void {
    const calls = ensureCarry(ctx, this.callsKey, () => ({ o: [], v: [] }));
    calls.o.push(o);
    calls.v.push(v);
  }

  /** The unscaled regularisers over the calls of this forward pass: -mean_{b,h} H(p̄) for the o and v routers (null if none recorded). */
  regularizers(ctx: ForwardContext): { o: tf.Scalar; v: tf.Scalar } | null {
    const h = readCarry(ctx, this.callsKey);
    if (!h?.o.length) return null;
    const term = (calls: tf.Tensor4D[]) => {
      const [B, , H, E] = calls[0]!.shape;
      const all = tf.concat(calls, 1); // [B, T·R, H, E]
      return entropyBalanceReg(tf.reshape(tf.transpose(all, [0, 2, 1, 3]), [B * H, -1, E]) as tf.Tensor3D);
    };
    return { o: term(h.o), v: term(h.v) };
  }

  override finalizeForward(ctx: ForwardContext): void {
    const r = this.regularizers(ctx);
    takeCarry(ctx, this.callsKey);
    if (!r) return;
    ctx.aux.push({ name: 'att_entropy_o', layer: this.path, value: r.o, coef: this.options.balanceCoef });
    ctx.aux.push({ name: 'att_entropy_v', layer: this.path, value: r.v, coef: this.options.balanceCoef });
  }

  /** q, k projections, K value and K output experts per head, the routers, and causal mixing. */
  override macsPerToken(seqLen: number): number {
    const { heads: H, headDim: dh, experts: E, k: K } = this.options;
    const d = this.dModel;
    const experts = E > 1 ? 2 * K * H * d * dh + 2 * H * E * d : 2 * H * dh * d + H * d;
    return 2 * H * dh * d + experts + causalMixingMacs(H, dh, seqLen);
  }

  /** The same projections at 2 FLOPs per MAC, mixing as 2 · n_ctx · H · dh (Module.flopsPerToken's convention). */
  override flopsPerToken(seqLen: number): number {
    const { heads: H, headDim: dh } = this.options;
    return 2 * (this.macsPerToken(seqLen) - causalMixingMacs(H, dh, seqLen)) + attentionMixingFlops(H, dh, seqLen);
  }

  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    seen.add(this.q);
    seen.add(this.k);
    const { heads: H, headDim: dh, experts: E, k: K } = this.options;
    const d = this.dModel;
    return 2 * H * dh * d + (E > 1 ? 2 * K * H * d * dh + 2 * H * E * d : 2 * H * dh * d + H * d);
  }
}

export const switchhead = defineEntry({
  kind: 'attention',
  name: 'switchhead',
  description:
    'SwitchHead: dense q/k, value and output experts per head with sigmoid gates, RoPE on part of each head (MoEUT); experts: 1 = dense with a gate per head.',
  reference: 'docs/moeut.md#switchhead-attention; arXiv 2312.07987, 2405.16039',
  schema: Config({
    heads: Type.Integer({ minimum: 1, default: 4 }),
    headDim: Type.Optional(Type.Integer({ minimum: 1, description: 'd_head; default dModel / heads' })),
    experts: Type.Integer({ minimum: 1, default: 8, description: 'experts per head for v and o (1 = dense-gated)' }),
    k: Type.Integer({ minimum: 1, default: 2, description: 'experts per head per token' }),
    rotateFraction: Type.Number({ minimum: 0, maximum: 1, default: 0.5, description: 'fraction of each head rotated by RoPE (rounded down to an even count)' }),
    ropeBase: Type.Number({ exclusiveMinimum: 0, default: 10000 }),
    dropout: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0, description: 'dropout on q' }),
    expertDropout: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0 }),
    balance: Type.Union([Type.Literal('sequence'), Type.Literal('none')], {
      default: 'sequence',
      description: 'MoEUT entropy regulariser per sequence and head, over time × repeats',
    }),
    balanceCoef: Type.Number({ minimum: 0, default: 0.001, description: 'regulariser weight (MoEUT δ = 0.001)' }),
    initScale: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'init std scale; default √(2 / layers)' })),
  }),
  create: (c, ctx) => {
    const d = ctx.need('dModel');
    if (c.headDim === undefined && d % c.heads !== 0)
      throw new MoelabError(`dModel ${d} is not divisible by heads ${c.heads}; set headDim`, `${ctx.path}.heads`);
    if (c.experts > 1 && c.k > c.experts) throw new MoelabError(`k = ${c.k} exceeds the number of experts per head (${c.experts})`, `${ctx.path}.k`);
    const L = ctx.env.nLayers as number | undefined;
    return new SwitchHead(d, { ...c, headDim: c.headDim ?? d / c.heads, initScale: c.initScale ?? (L ? Math.sqrt(2 / L) : 1) }, ctx.rng);
  },
});
