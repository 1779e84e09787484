/**
 * PEER — Parameter Efficient Expert Retrieval (He 2024, "Mixture of A Million Experts"), an `ffn` entry:
 * N = S² single-neuron experts retrieved per token by product keys, with h retrieval heads.
 * Docs: docs/peer-fff.md#peer (arXiv 2407.04153; no official code; we follow the paper: shared sub-keys, query BatchNorm,
 * softmax over the k retrieved scores, no biases).
 *
 *   q = BN(W_q x)                                     per head r: q_r = [q1; q2] (dk/2 each)
 *   score_r(i, j) = q1·C0[i] + q2·C1[j]               expert id e = i·S + j
 *   I_r = top-k of score_r (product-key search: top-k of each half, then top-k of the k² sums — exact)
 *   out = Σ_r Σ_{e ∈ I_r} softmax(score_r)_e · σ(u_e·x) v_e
 *
 * Query BatchNorm (on by default): train mode uses the batch statistics over all tokens (gradients flow
 * through them) and updates the running buffers (momentum 0.1, unbiased variance); eval mode uses the
 * buffers. Parameter names (paper pseudo-code + PyTorch BatchNorm1d): `query_proj.weight [h·dk, d]`,
 * `query_bn.{weight,bias,running_mean,running_var}`, `sub_keys [2, S, dk/2]`, `w_down_embed.weight [N, d]`,
 * `w_up_embed.weight [N, d]`.
 *
 * Expert masking: `ctx.expertMask.get(layerPath)` (expert ids e) removes experts from retrieval; the
 * search stays exact by taking top-(k + |mask|) per half (a top-k unmasked pair (i, j) has at most
 * k − 1 + |mask| better i' in its half).
 */
import {
  Config,
  defineEntry,
  Embedding,
  type FeedForward,
  type ForwardContext,
  Linear,
  Module,
  MoelabError,
  type Rng,
  type RoutingStats,
  Type,
  activate,
  tf,
} from '@moelab/core';

/** BatchNorm1d over the last axis of [n, F] (affine), PyTorch semantics. */
export class BatchNorm1d extends Module {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  readonly runningMean: tf.Variable;
  readonly runningVar: tf.Variable;
  constructor(
    readonly features: number,
    readonly eps = 1e-5,
    readonly momentum = 0.1,
  ) {
    super();
    this.weight = this.param('weight', new Float32Array(features).fill(1), [features]);
    this.bias = this.param('bias', new Float32Array(features), [features]);
    this.runningMean = this.buffer('running_mean', new Float32Array(features), [features]);
    this.runningVar = this.buffer('running_var', new Float32Array(features).fill(1), [features]);
  }

  /** Returns the normalised input and, in training mode, the batch statistics it used (running buffers updated). */
  forward(x: tf.Tensor2D, training: boolean): { y: tf.Tensor2D; batchMean?: Float32Array; batchVar?: Float32Array } {
    if (!training) {
      const y = tf.add(tf.mul(tf.div(tf.sub(x, this.runningMean), tf.sqrt(tf.add(this.runningVar, this.eps))), this.weight), this.bias) as tf.Tensor2D;
      return { y };
    }
    const n = x.shape[0];
    if (n < 2) throw new MoelabError(`BatchNorm in training mode needs at least 2 tokens (got ${n})`, this.path || undefined);
    const { mean, variance } = tf.moments(x, 0);
    const y = tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, this.eps))), this.weight), this.bias) as tf.Tensor2D;
    const batchMean = (mean.dataSync() as Float32Array).slice();
    const batchVar = (variance.dataSync() as Float32Array).slice();
    const rm = this.runningMean.dataSync();
    const rv = this.runningVar.dataSync();
    const m = this.momentum;
    const newM = batchMean.map((v, f) => (1 - m) * rm[f]! + m * v);
    const newV = batchVar.map((v, f) => (1 - m) * rv[f]! + (m * v * n) / (n - 1));
    tf.tidy(() => {
      this.runningMean.assign(tf.tensor1d(newM));
      this.runningVar.assign(tf.tensor1d(newV));
    });
    return { y, batchMean, batchVar };
  }
}

export interface PEEROptions {
  experts: number;
  heads: number;
  k: number;
  keyDim: number;
  activation: 'relu' | 'gelu';
  queryBatchNorm: boolean;
  bnEps: number;
  bnMomentum: number;
}

export interface PEERRetrieval {
  /** Raw queries [n, h·dk] and the normalised ones used for retrieval. */
  qRaw: tf.Tensor2D;
  q: tf.Tensor2D;
  /** Retrieved expert ids [n, h, k], each row by descending score. */
  indices: Int32Array;
  /** Scores and gates [n, h, k] (differentiable). */
  scores: tf.Tensor3D;
  gates: tf.Tensor3D;
  batchMean?: Float32Array;
  batchVar?: Float32Array;
}

/**
 * Exact top-k over score(i, j) = s1[i] + s2[j] (i, j < S) by product-key search, skipping `masked` ids
 * (e = i·S + j). s1, s2: [rows, S] row-major. Returns ids and sub-key indices [rows, k] by descending score.
 */
export function productKeyTopK(
  s1: ArrayLike<number>,
  s2: ArrayLike<number>,
  rows: number,
  S: number,
  k: number,
  masked?: Set<number>,
): { ids: Int32Array; i1: Int32Array; i2: Int32Array } {
  const m = masked?.size ?? 0;
  const kk = Math.min(S, k + m);
  if (k > S) throw new MoelabError(`product-key search needs k <= √N (k ${k}, √N ${S})`);
  const ids = new Int32Array(rows * k);
  const i1 = new Int32Array(rows * k);
  const i2 = new Int32Array(rows * k);
  const top = (s: ArrayLike<number>, o: number) => {
    const idx = Array.from({ length: S }, (_, i) => i);
    idx.sort((a, b) => s[o + b]! - s[o + a]! || a - b);
    return idx.slice(0, kk);
  };
  for (let r = 0; r < rows; r++) {
    const a = top(s1, r * S);
    const b = top(s2, r * S);
    const cand: [number, number, number][] = [];
    for (const i of a)
      for (const j of b) {
        if (masked?.has(i * S + j)) continue;
        cand.push([s1[r * S + i]! + s2[r * S + j]!, i, j]);
      }
    if (cand.length < k) throw new MoelabError(`only ${cand.length} experts are left unmasked, fewer than k = ${k}`);
    cand.sort((p, q) => q[0] - p[0] || p[1] * S + p[2] - (q[1] * S + q[2]));
    for (let c = 0; c < k; c++) {
      const [, i, j] = cand[c]!;
      ids[r * k + c] = i * S + j;
      i1[r * k + c] = i;
      i2[r * k + c] = j;
    }
  }
  return { ids, i1, i2 };
}

export class PEERLayer extends Module implements FeedForward {
  readonly queryProj: Linear;
  readonly queryBn?: BatchNorm1d;
  readonly subKeys: tf.Variable;
  readonly down: Embedding;
  readonly up: Embedding;
  readonly S: number;

  constructor(
    readonly dModel: number,
    readonly options: PEEROptions,
    rng: Rng,
  ) {
    super();
    const { experts: N, heads: h, keyDim: dk, k } = options;
    const S = Math.round(Math.sqrt(N));
    if (S * S !== N) throw new MoelabError(`peer needs a perfect-square number of experts (got ${N})`);
    if (dk % 2) throw new MoelabError(`peer needs an even keyDim (got ${dk})`);
    if (k > S) throw new MoelabError(`k = ${k} exceeds √N = ${S} (product-key search retrieves k per half)`);
    this.S = S;
    this.queryProj = this.child('query_proj', new Linear(dModel, h * dk, rng));
    const a = Math.sqrt(6 / (dModel + h * dk)); // Xavier-uniform
    this.queryProj.weight.assign(tf.tensor2d(rng.uniformArray(h * dk * dModel, -a, a), [h * dk, dModel]));
    if (options.queryBatchNorm) this.queryBn = this.child('query_bn', new BatchNorm1d(h * dk, options.bnEps, options.bnMomentum));
    const ks = 1 / Math.sqrt(dk / 2);
    this.subKeys = this.param('sub_keys', rng.uniformArray(2 * S * (dk / 2), -ks, ks), [2, S, dk / 2]);
    this.down = this.child('w_down_embed', new Embedding(N, dModel, rng, 1 / Math.sqrt(dModel)));
    this.up = this.child('w_up_embed', new Embedding(N, dModel, rng, 1 / Math.sqrt(dModel)));
  }

  get numExperts(): number {
    return this.options.experts;
  }

  /** Retrieve h·k experts per token of x [n, d]. */
  retrieve(x: tf.Tensor2D, training: boolean, masked?: Set<number>): PEERRetrieval {
    const { heads: h, keyDim: dk, k } = this.options;
    const n = x.shape[0];
    const S = this.S;
    if (masked && S * S - masked.size < k)
      throw new MoelabError(`only ${S * S - masked.size} experts are left unmasked, fewer than k = ${k}`, this.path || undefined);
    const qRaw = this.queryProj.forward(x) as tf.Tensor2D;
    let q = qRaw;
    let batchMean: Float32Array | undefined;
    let batchVar: Float32Array | undefined;
    if (this.queryBn) ({ y: q, batchMean, batchVar } = this.queryBn.forward(qRaw, training));
    const halves = tf.reshape(q, [n * h, 2, dk / 2]);
    const [q1, q2] = tf.unstack(halves, 1) as [tf.Tensor2D, tf.Tensor2D];
    const [c0, c1] = tf.unstack(this.subKeys, 0) as [tf.Tensor2D, tf.Tensor2D];
    const s1 = tf.matMul(q1, c0, false, true); // [n·h, S]
    const s2 = tf.matMul(q2, c1, false, true);
    const { ids, i1, i2 } = productKeyTopK(s1.dataSync(), s2.dataSync(), n * h, S, k, masked);
    const rowBase = (sub: Int32Array) => Int32Array.from(sub, (v, a) => Math.floor(a / k) * S + v);
    const scores = tf.reshape(
      tf.add(tf.gather(tf.reshape(s1, [-1]), tf.tensor1d(rowBase(i1), 'int32')), tf.gather(tf.reshape(s2, [-1]), tf.tensor1d(rowBase(i2), 'int32'))),
      [n, h, k],
    ) as tf.Tensor3D;
    const gates = tf.softmax(scores) as tf.Tensor3D;
    return { qRaw, q, indices: ids, scores, gates, batchMean, batchVar };
  }

  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const shape = x.shape;
    const d = this.dModel;
    const flat = tf.reshape(x, [-1, d]) as tf.Tensor2D;
    const n = flat.shape[0];
    const { heads: h, k } = this.options;
    const masked = ctx.expertMask?.get(this.path);
    if (masked)
      for (const id of masked)
        if (!Number.isInteger(id) || id < 0 || id >= this.numExperts)
          throw new MoelabError(`expert mask id ${id} is out of range [0, ${this.numExperts})`, this.path);
    const r = this.retrieve(flat, ctx.training, masked);
    const idx = tf.tensor1d(r.indices, 'int32');
    const u = tf.reshape(tf.gather(this.down.weight, idx), [n, h * k, d]);
    const v = tf.reshape(tf.gather(this.up.weight, idx), [n, h * k, d]);
    const dots = tf.reshape(tf.matMul(u, tf.reshape(flat, [n, d, 1])), [n, h * k]);
    const act = tf.mul(activate(dots, this.options.activation), tf.reshape(r.gates, [n, h * k]));
    const out = tf.reshape(tf.matMul(tf.reshape(act, [n, 1, h * k]), v), shape);
    this.record(ctx, r.indices, n);
    return out;
  }

  /** Usage metrics of one retrieval (from PKM; docs/peer-fff.md#peer): fraction of experts with nonzero summed gate, and KL(z ‖ uniform). */
  usage(r: PEERRetrieval): { expertUsage: number; unevenness: number } {
    const N = this.numExperts;
    const z = new Float64Array(N);
    const g = r.gates.dataSync();
    for (let a = 0; a < r.indices.length; a++) z[r.indices[a]!]! += g[a]!;
    let total = 0;
    let used = 0;
    for (let e = 0; e < N; e++) {
      total += z[e]!;
      if (z[e]! !== 0) used++;
    }
    let kl = Math.log(N);
    for (let e = 0; e < N; e++) if (z[e]! > 0) kl += (z[e]! / total) * Math.log(z[e]! / total);
    return { expertUsage: used / N, unevenness: kl };
  }

  private record(ctx: ForwardContext, ids: Int32Array, n: number): void {
    const N = this.numExperts;
    const per = this.options.heads * this.options.k;
    const counts = new Array<number>(N).fill(0);
    for (const e of ids) counts[e]!++;
    const stats: RoutingStats = {
      layer: this.path,
      numExperts: N,
      tokens: n,
      counts,
      load: counts.map((c) => c / Math.max(1, ids.length)),
      dropRate: 0,
      expertsPerToken: per,
      expertsPerTokenMin: per,
      expertsPerTokenMax: per,
    };
    if (ctx.stats !== false) ctx.routing.push(stats);
    if (ctx.assignments) {
      const list = ctx.assignments.get(this.path) ?? [];
      list.push({ tokenIndex: Int32Array.from(ids, (_, a) => Math.floor(a / per)), expertIndex: ids, tokens: n });
      ctx.assignments.set(this.path, list);
    }
  }

  /** Parameters: 2·N·d + h·dk·d + 2·S·dk/2 (+ 2·h·dk BatchNorm affine), docs/peer-fff.md#retrieval-and-output. */
  static parameterCount(d: number, N: number, h: number, dk: number, queryBatchNorm = true): number {
    return 2 * N * d + h * dk * d + Math.round(Math.sqrt(N)) * dk + (queryBatchNorm ? 2 * h * dk : 0);
  }

  /** Active parameters per token: query network + sub-keys + (2d)·h·k retrieved expert rows. */
  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    const { heads: h, keyDim: dk, k } = this.options;
    return h * dk * this.dModel + this.S * dk + (this.queryBn ? 2 * h * dk : 0) + 2 * this.dModel * h * k;
  }

  /** MACs per token: query, half scores over S sub-keys per head, and the h·k retrieved experts (2d each). */
  override macsPerToken(_seqLen: number): number {
    const { heads: h, keyDim: dk, k } = this.options;
    return h * dk * this.dModel + h * this.S * dk + 2 * this.dModel * h * k;
  }
}

export const peerFFN = defineEntry({
  kind: 'ffn',
  name: 'peer',
  description: 'PEER: product-key retrieval of single-neuron experts from a pool of N = S², multi-head, query BatchNorm.',
  reference: 'docs/peer-fff.md#peer; arXiv 2407.04153',
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 1024, description: 'N experts (a perfect square)' }),
    heads: Type.Integer({ minimum: 1, default: 4, description: 'retrieval heads h (outputs summed)' }),
    k: Type.Integer({ minimum: 1, default: 8, description: 'experts retrieved per head' }),
    keyDim: Type.Integer({ minimum: 2, default: 32, description: 'query / key dimension dk (even)' }),
    activation: Type.Union([Type.Literal('relu'), Type.Literal('gelu')], { default: 'gelu', description: 'expert activation σ' }),
    queryBatchNorm: Type.Boolean({ default: true, description: 'BatchNorm on the queries (PEER default)' }),
    bnEps: Type.Number({ exclusiveMinimum: 0, default: 1e-5 }),
    bnMomentum: Type.Number({ minimum: 0, maximum: 1, default: 0.1 }),
  }),
  create: (c, ctx) => {
    const S = Math.round(Math.sqrt(c.experts));
    if (S * S !== c.experts) throw new MoelabError(`experts must be a perfect square (got ${c.experts})`, `${ctx.path}.experts`);
    if (c.keyDim % 2) throw new MoelabError(`keyDim must be even (got ${c.keyDim})`, `${ctx.path}.keyDim`);
    if (c.k > S) throw new MoelabError(`k = ${c.k} exceeds √experts = ${S}`, `${ctx.path}.k`);
    return new PEERLayer(ctx.need('dModel'), c, ctx.rng);
  },
});
