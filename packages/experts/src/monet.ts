/**
 * MONET (Park et al., ICLR 2025, "Mixture of Monosemantic Experts for Transformers"; code dmis-lab/Monet):
 * N = E² experts per layer composed from 2E shards, so parameters grow with √N. Router and experts are one
 * layer, registered as two `ffn` entries: `monet-hd` (horizontal decomposition) and `monet-vd` (vertical).
 * Spec: specs/monet.md (§3 router, §5 HD, §6 VD, §8 aux losses, §9 masking).
 *
 * Router (one per routing group of G layers; layers L with L % G != 0 reuse the last router's g1, g2):
 *
 *   z_K = (w_K x) as [H, E]            zn = BatchNorm per head over all tokens and experts (no affine)
 *   σ = Φ⁻¹(1 − k/E)                   sel = zn ≥ min(max_e zn, σ)      (≥ 1 expert per head)
 *   g_K[h, e] = softmax of the raw z over the selected set, 0 elsewhere
 *
 * Train mode normalises with batch statistics and updates the running buffers (momentum 0.1, unbiased
 * variance); eval mode uses the buffers. BN only feeds the mask: no gradient flows through it.
 *
 * HD: E_ij(x) = V_j relu2(U_i x + bu_i) + c_j,   out = Σ_h Σ_ij g1[h,i] g2[h,j] E_ij(x), computed as
 *   a = relu2(U x + bu) [E, m];  s[h] = Σ_i g1[h,i] a_i;  y_j = Σ_h g2[h,j] s[h];  out = Σ_j V_j y_j + Σ_j w2_j c_j
 * VD: hidden halves a1_i (owned by i), a2_j (owned by j), output halves top (i) and bottom (j), six terms §6.
 *
 * Aux losses (§8, batch-mean reading): L_unif = −(1/2HE) Σ log p̄, L_amb = mean_t (1/2H) Σ_h (1 − max g),
 * pushed as `monet_unif` / `monet_amb` with coefficient λ (default 1e-3) by every routing layer.
 *
 * Expert masking (§9): `ctx.expertMask.get(layerPath)` holds expert ids i·E + j; the layer then evaluates
 * from G' = (Σ_h g1 ⊗ g2) ⊙ M, so a removed expert's weights and biases vanish (no renormalisation).
 *
 * Parameter names follow the official state_dict relative to a decoder layer: `router.w1.weight`,
 * `router.w2.weight`, `router.norm{1,2}.running_{mean,var}`, `moe.u.weight`, `moe.u.bias`, `moe.v.weight`,
 * `moe.b` (HD) or `moe.u1/u2.{weight,bias}`, `moe.v11/v12/v21/v22.weight`, `moe.b1`, `moe.b2` (VD).
 */
import {
  ACTIVATIONS,
  type Activation,
  activate,
  Config,
  defineEntry,
  type FeedForward,
  type ForwardContext,
  Linear,
  Module,
  MoelabError,
  type Rng,
  type RoutingStats,
  Type,
  tf,
} from '@moelab/core';

/**
 * Standard-normal quantile Φ⁻¹(p): Wichura's AS241 (PPND16), the algorithm of Python's
 * `statistics.NormalDist.inv_cdf` (relative error ~1e-16). Φ⁻¹(0) = −∞, Φ⁻¹(1) = +∞.
 */
export function normalQuantile(p: number): number {
  if (Number.isNaN(p) || p < 0 || p > 1) throw new RangeError(`normalQuantile: p = ${p} is not in [0, 1]`);
  if (p === 0) return Number.NEGATIVE_INFINITY;
  if (p === 1) return Number.POSITIVE_INFINITY;
  const q = p - 0.5;
  if (Math.abs(q) <= 0.425) {
    const r = 0.180625 - q * q;
    const num =
      ((((((2509.0809287301226727 * r + 33430.575583588128105) * r + 67265.770927008700853) * r + 45921.953931549871457) * r + 13731.693765509461125) * r +
        1971.5909503065514427) *
        r +
        133.14166789178437745) *
        r +
      3.387132872796366608;
    const den =
      ((((((5226.495278852545925 * r + 28729.085735721942674) * r + 39307.89580009271061) * r + 21213.794301586595867) * r + 5394.1960214247511077) * r +
        687.1870074920579083) *
        r +
        42.313330701600911252) *
        r +
      1.0;
    return (q * num) / den;
  }
  let r = Math.sqrt(-Math.log(q < 0 ? p : 1 - p));
  let val: number;
  if (r <= 5) {
    r -= 1.6;
    val =
      (((((((7.7454501427834140764e-4 * r + 0.0227238449892691845833) * r + 0.24178072517745061177) * r + 1.27045825245236838258) * r +
        3.64784832476320460504) *
        r +
        5.7694972214606914055) *
        r +
        4.6303378461565452959) *
        r +
        1.42343711074968357734) /
      (((((((1.05075007164441684324e-9 * r + 5.475938084995344946e-4) * r + 0.0151986665636164571966) * r + 0.14810397642748007459) * r +
        0.68976733498510000455) *
        r +
        1.6763848301838038494) *
        r +
        2.05319162663775882187) *
        r +
        1.0);
  } else {
    r -= 5;
    val =
      (((((((2.01033439929228813265e-7 * r + 2.71155556874348757815e-5) * r + 0.0012426609473880784386) * r + 0.026532189526576123093) * r +
        0.29656057182850489123) *
        r +
        1.7848265399172913358) *
        r +
        5.4637849111641143699) *
        r +
        6.6579046435011037772) /
      (((((((2.04426310338993978564e-15 * r + 1.4215117583164458887e-7) * r + 1.8463183175100546818e-5) * r + 7.868691311456132591e-4) * r +
        0.0148753612908506148525) *
        r +
        0.13692988092273580531) *
        r +
        0.59983220655588793769) *
        r +
        1.0);
  }
  return q < 0 ? -val : val;
}

/** BatchNorm1d(H, affine = false) state: running mean / variance per routing head (PyTorch buffers). */
export class RunningNorm extends Module {
  readonly runningMean: tf.Variable;
  readonly runningVar: tf.Variable;
  constructor(readonly features: number) {
    super();
    this.runningMean = this.buffer('running_mean', new Float32Array(features), [features]);
    this.runningVar = this.buffer('running_var', new Float32Array(features).fill(1), [features]);
  }
}

export interface MonetRouterOptions {
  heads: number;
  experts: number;
  k: number;
  eps: number;
  momentum: number;
  initStd: number;
}

/** One group's routing result: everything the layer, the metrics and the fixtures read. */
export interface MonetGroupRouting {
  /** Raw logits [n, H, E] (differentiable). */
  z: tf.Tensor3D;
  /** BN-normalised logits, row-major [n, H, E]. */
  zn: Float32Array;
  /** 1 where selected, [n, H, E]. */
  sel: Uint8Array;
  /** Routing probabilities [n, H, E] (differentiable; exact zeros where not selected). */
  g: tf.Tensor3D;
  /** Statistics used for normalisation (batch statistics in train mode, the buffers in eval mode). */
  mean: Float64Array;
  varBiased: Float64Array;
}

export interface MonetRouting {
  n: number;
  group1: MonetGroupRouting;
  group2: MonetGroupRouting;
}

/** MONET's router: two groups of H·E expert embeddings with BatchNorm-threshold selection (specs/monet.md §3). */
export class MonetRouter extends Module {
  readonly w1: Linear;
  readonly w2: Linear;
  readonly norm1: RunningNorm;
  readonly norm2: RunningNorm;
  /** σ = Φ⁻¹(1 − k/E); −∞ when k ≥ E (every expert selected). */
  readonly sigma: number;

  constructor(
    readonly dModel: number,
    readonly options: MonetRouterOptions,
    rng: Rng,
  ) {
    super();
    const { heads: H, experts: E } = options;
    this.w1 = this.child('w1', new Linear(dModel, H * E, rng, { std: options.initStd }));
    this.w2 = this.child('w2', new Linear(dModel, H * E, rng, { std: options.initStd }));
    this.norm1 = this.child('norm1', new RunningNorm(H));
    this.norm2 = this.child('norm2', new RunningNorm(H));
    this.sigma = options.k >= E ? Number.NEGATIVE_INFINITY : normalQuantile(1 - options.k / E);
  }

  /**
   * Route tokens x [n, d]. In training mode the BN statistics are the batch's (over the tokens whose
   * `tokenMask` entry is 1, default all; specs/monet.md §3 recommends masking padding) and the running
   * buffers are updated; otherwise the buffers are used.
   */
  route(x: tf.Tensor2D, training: boolean, tokenMask?: Uint8Array): MonetRouting {
    const n = x.shape[0];
    return {
      n,
      group1: this.group(this.w1, this.norm1, x, training, tokenMask),
      group2: this.group(this.w2, this.norm2, x, training, tokenMask),
    };
  }

  private group(w: Linear, norm: RunningNorm, x: tf.Tensor2D, training: boolean, tokenMask?: Uint8Array): MonetGroupRouting {
    const { heads: H, experts: E, eps, momentum } = this.options;
    const n = x.shape[0];
    if (tokenMask && tokenMask.length !== n) throw new MoelabError(`monet router: token mask has ${tokenMask.length} entries for ${n} tokens`);
    const z = tf.reshape(w.forward(x), [n, H, E]) as tf.Tensor3D;
    const zd = z.dataSync();
    const mean = new Float64Array(H);
    const varBiased = new Float64Array(H);
    if (training) {
      let count = 0;
      for (let t = 0; t < n; t++) if (!tokenMask || tokenMask[t]) count++;
      if (count === 0) throw new MoelabError('monet router: no token to take batch statistics from');
      for (let t = 0; t < n; t++) {
        if (tokenMask && !tokenMask[t]) continue;
        for (let h = 0; h < H; h++) for (let e = 0; e < E; e++) mean[h]! += zd[(t * H + h) * E + e]!;
      }
      const cnt = count * E;
      for (let h = 0; h < H; h++) mean[h]! /= cnt;
      for (let t = 0; t < n; t++) {
        if (tokenMask && !tokenMask[t]) continue;
        for (let h = 0; h < H; h++)
          for (let e = 0; e < E; e++) {
            const dv = zd[(t * H + h) * E + e]! - mean[h]!;
            varBiased[h]! += dv * dv;
          }
      }
      for (let h = 0; h < H; h++) varBiased[h]! /= cnt;
      const rm = norm.runningMean.dataSync();
      const rv = norm.runningVar.dataSync();
      const newM = new Float32Array(H);
      const newV = new Float32Array(H);
      for (let h = 0; h < H; h++) {
        newM[h] = (1 - momentum) * rm[h]! + momentum * mean[h]!;
        newV[h] = (1 - momentum) * rv[h]! + momentum * (cnt > 1 ? (varBiased[h]! * cnt) / (cnt - 1) : varBiased[h]!);
      }
      tf.tidy(() => {
        norm.runningMean.assign(tf.tensor1d(newM));
        norm.runningVar.assign(tf.tensor1d(newV));
      });
    } else {
      mean.set(norm.runningMean.dataSync());
      varBiased.set(norm.runningVar.dataSync());
    }
    const zn = new Float32Array(n * H * E);
    const sel = new Uint8Array(n * H * E);
    const maskAdd = new Float32Array(n * H * E);
    for (let h = 0; h < H; h++) {
      const inv = 1 / Math.sqrt(varBiased[h]! + eps);
      for (let t = 0; t < n; t++) {
        const o = (t * H + h) * E;
        let mx = Number.NEGATIVE_INFINITY;
        for (let e = 0; e < E; e++) {
          const v = Math.fround((zd[o + e]! - mean[h]!) * inv); // compare the stored float32 values
          zn[o + e] = v;
          if (v > mx) mx = v;
        }
        const thr = Math.min(mx, this.sigma);
        for (let e = 0; e < E; e++) {
          const s = zn[o + e]! >= thr ? 1 : 0;
          sel[o + e] = s;
          maskAdd[o + e] = s ? 0 : -1e9;
        }
      }
    }
    const g = tf.softmax(tf.add(z, tf.tensor3d(maskAdd, [n, H, E]))) as tf.Tensor3D;
    return { z, zn, sel, g, mean, varBiased };
  }
}

/** L_unif = −(1/(2HE)) Σ_{K,h,e} log max(p̄_K[h,e], 1e-9), p̄ = mean over tokens of g (specs/monet.md §8). */
export function monetUniformityLoss(g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Scalar {
  const [, H, E] = g1.shape;
  const logs = (g: tf.Tensor3D) => tf.sum(tf.log(tf.maximum(tf.mean(g, 0), 1e-9)));
  return tf.mul(tf.add(logs(g1), logs(g2)), -1 / (2 * H * E)) as tf.Scalar;
}

/** L_amb = mean over tokens of (1/(2H)) Σ_h [(1 − max_e g1[h,e]) + (1 − max_e g2[h,e])]. */
export function monetAmbiguityLoss(g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Scalar {
  const H = g1.shape[1];
  const m = tf.add(tf.sum(tf.max(g1, 2), 1), tf.sum(tf.max(g2, 2), 1)); // [n]
  return tf.mean(tf.sub(1, tf.div(m, 2 * H))) as tf.Scalar;
}

/** G[t, i, j] = Σ_h g1[t,h,i] g2[t,h,j]: the routing score of composed expert (i, j) (id i·E + j). */
export function monetExpertScores(g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Tensor3D {
  return tf.matMul(g1, g2, true, false) as tf.Tensor3D;
}

/** The expert bank of a MONET layer (HD or VD), as the layer sees it. */
export interface MonetExperts extends Module {
  /** Factored evaluation from the two groups' routing (§5/§6). x [n, d] -> [n, d]. */
  forward(x: tf.Tensor2D, g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Tensor2D;
  /** Evaluation from an explicit (masked) score tensor G' [n, E, E] (§9). */
  forwardScores(x: tf.Tensor2D, scores: tf.Tensor3D): tf.Tensor2D;
}

/** MONET-HD expert shards: bottoms U_i (group 1), tops V_j and biases c_j (group 2). */
export class MonetHDExperts extends Module implements MonetExperts {
  readonly u: Linear;
  readonly v: Linear;
  readonly b: tf.Variable;
  constructor(
    readonly dModel: number,
    readonly experts: number,
    readonly dim: number,
    readonly activation: Activation,
    rng: Rng,
    initStd: number,
  ) {
    super();
    const E = experts;
    this.u = this.child('u', new Linear(dModel, E * dim, rng, { bias: true, std: initStd }));
    this.v = this.child('v', new Linear(E * dim, dModel, rng, { std: initStd }));
    this.b = this.param('b', new Float32Array(E * dModel), [E, dModel]);
  }

  private bottoms(x: tf.Tensor2D): tf.Tensor3D {
    return tf.reshape(activate(this.u.forward(x), this.activation), [x.shape[0], this.experts, this.dim]) as tf.Tensor3D;
  }

  private top(y: tf.Tensor3D, w2: tf.Tensor2D): tf.Tensor2D {
    const n = y.shape[0];
    return tf.add(this.v.forward(tf.reshape(y, [n, this.experts * this.dim])), tf.matMul(w2, this.b)) as tf.Tensor2D;
  }

  forward(x: tf.Tensor2D, g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Tensor2D {
    const a = this.bottoms(x);
    const s = tf.matMul(g1, a); // [n, H, m]
    const y = tf.matMul(g2, s, true, false) as tf.Tensor3D; // [n, E, m]
    return this.top(y, tf.sum(g2, 1) as tf.Tensor2D);
  }

  forwardScores(x: tf.Tensor2D, scores: tf.Tensor3D): tf.Tensor2D {
    const a = this.bottoms(x);
    const y = tf.matMul(scores, a, true, false) as tf.Tensor3D; // y_j = Σ_i G_ij a_i
    return this.top(y, tf.sum(scores, 1) as tf.Tensor2D);
  }
}

/** MONET-VD expert shards: hidden halves u1 (group 1) / u2 (group 2), output blocks v11, v12 (i), v21, v22 (j). */
export class MonetVDExperts extends Module implements MonetExperts {
  readonly u1: Linear;
  readonly u2: Linear;
  readonly v11: Linear;
  readonly v12: Linear;
  readonly v21: Linear;
  readonly v22: Linear;
  readonly b1: tf.Variable;
  readonly b2: tf.Variable;
  constructor(
    readonly dModel: number,
    readonly experts: number,
    readonly dim: number,
    readonly activation: Activation,
    rng: Rng,
    initStd: number,
  ) {
    super();
    if (dModel % 2 || dim % 2) throw new MoelabError(`monet-vd needs an even dModel and an even expertDim (got ${dModel}, ${dim})`);
    const E = experts;
    const h = dim / 2;
    const half = dModel / 2;
    this.u1 = this.child('u1', new Linear(dModel, E * h, rng, { bias: true, std: initStd }));
    this.u2 = this.child('u2', new Linear(dModel, E * h, rng, { bias: true, std: initStd }));
    this.v11 = this.child('v11', new Linear(E * h, half, rng, { std: initStd }));
    this.v12 = this.child('v12', new Linear(E * h, half, rng, { std: initStd }));
    this.v21 = this.child('v21', new Linear(E * h, half, rng, { std: initStd }));
    this.v22 = this.child('v22', new Linear(E * h, half, rng, { std: initStd }));
    this.b1 = this.param('b1', new Float32Array(E * half), [E, half]);
    this.b2 = this.param('b2', new Float32Array(E * half), [E, half]);
  }

  private halves(x: tf.Tensor2D): [tf.Tensor3D, tf.Tensor3D] {
    const n = x.shape[0];
    const shape: [number, number, number] = [n, this.experts, this.dim / 2];
    return [
      tf.reshape(activate(this.u1.forward(x), this.activation), shape) as tf.Tensor3D,
      tf.reshape(activate(this.u2.forward(x), this.activation), shape) as tf.Tensor3D,
    ];
  }

  /** Output from the per-shard mixes: w1/w2 [n, E] shard weights, r1 [n,E,m/2] (group-2 activations mixed per i), r2 (group-1 activations mixed per j). */
  private assemble(a1: tf.Tensor3D, a2: tf.Tensor3D, w1: tf.Tensor2D, w2: tf.Tensor2D, r1: tf.Tensor3D, r2: tf.Tensor3D): tf.Tensor2D {
    const n = a1.shape[0];
    const flat = (t: tf.Tensor) => tf.reshape(t, [n, -1]);
    const top = tf.addN([this.v11.forward(flat(tf.mul(a1, tf.expandDims(w1, 2)))), this.v12.forward(flat(r1)), tf.matMul(w1, this.b1)]);
    const bot = tf.addN([this.v21.forward(flat(r2)), this.v22.forward(flat(tf.mul(a2, tf.expandDims(w2, 2)))), tf.matMul(w2, this.b2)]);
    return tf.concat([top, bot], 1) as tf.Tensor2D;
  }

  forward(x: tf.Tensor2D, g1: tf.Tensor3D, g2: tf.Tensor3D): tf.Tensor2D {
    const [a1, a2] = this.halves(x);
    const r1 = tf.matMul(g1, tf.matMul(g2, a2), true, false) as tf.Tensor3D; // Σ_h g1[h,i] Σ_j g2[h,j] a2_j
    const r2 = tf.matMul(g2, tf.matMul(g1, a1), true, false) as tf.Tensor3D; // Σ_h g2[h,j] Σ_i g1[h,i] a1_i
    return this.assemble(a1, a2, tf.sum(g1, 1) as tf.Tensor2D, tf.sum(g2, 1) as tf.Tensor2D, r1, r2);
  }

  forwardScores(x: tf.Tensor2D, scores: tf.Tensor3D): tf.Tensor2D {
    const [a1, a2] = this.halves(x);
    const r1 = tf.matMul(scores, a2) as tf.Tensor3D; // Σ_j G_ij a2_j
    const r2 = tf.matMul(scores, a1, true, false) as tf.Tensor3D; // Σ_i G_ij a1_i
    return this.assemble(a1, a2, tf.sum(scores, 2) as tf.Tensor2D, tf.sum(scores, 1) as tf.Tensor2D, r1, r2);
  }
}

export interface MonetOptions {
  decomposition: 'horizontal' | 'vertical';
  /** Experts per group E (= √N). */
  experts: number;
  /** Hidden width m of one composed expert. */
  expertDim: number;
  heads: number;
  k: number;
  /** Router-sharing period G: layers with layerIndex % G == 0 own a router. */
  routerGroup: number;
  activation: Activation;
  unifCoef: number;
  ambCoef: number;
  initStd: number;
  bnEps: number;
  bnMomentum: number;
}

/** The routing of the most recent routing layer in a forward pass, for the layers that share it. */
const sharedRouting = new WeakMap<ForwardContext, MonetRouting>();

/** A MONET layer: router (if it owns one) + HD or VD experts; output before the residual add. */
export class MonetLayer extends Module implements FeedForward {
  readonly router?: MonetRouter;
  readonly moe: MonetHDExperts | MonetVDExperts;
  /** The routing of the last forward call (for inspection and the fixture runner). */
  lastRouting?: MonetRouting;

  constructor(
    readonly dModel: number,
    readonly options: MonetOptions,
    ownsRouter: boolean,
    rng: Rng,
  ) {
    super();
    const { experts: E, expertDim: m, heads: H, k } = options;
    if (k > E) throw new MoelabError(`k = ${k} exceeds the experts per group (${E})`);
    if (ownsRouter)
      this.router = this.child(
        'router',
        new MonetRouter(dModel, { heads: H, experts: E, k, eps: options.bnEps, momentum: options.bnMomentum, initStd: options.initStd }, rng),
      );
    const Experts = options.decomposition === 'horizontal' ? MonetHDExperts : MonetVDExperts;
    this.moe = this.child('moe', new Experts(dModel, E, m, options.activation, rng, options.initStd));
  }

  /** Composed experts per layer N = E². */
  get numExperts(): number {
    return this.options.experts * this.options.experts;
  }

  /** Expert parameters per layer: 2·E·m·d + E·m + E·d (specs/monet.md §7), plus 2·H·E·d on routing layers. */
  static parameterCount(d: number, E: number, m: number, H: number, ownsRouter: boolean): number {
    return 2 * E * m * d + E * m + E * d + (ownsRouter ? 2 * H * E * d : 0);
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: { routerInput?: tf.Tensor; tokenMask?: Uint8Array } = {}): tf.Tensor {
    const shape = x.shape;
    const d = shape[shape.length - 1]!;
    const flat = tf.reshape(x, [-1, d]) as tf.Tensor2D;
    const n = flat.shape[0];
    let routing: MonetRouting | undefined;
    if (this.router) {
      const rin = sources.routerInput ? (tf.reshape(sources.routerInput, [-1, sources.routerInput.shape.at(-1)!]) as tf.Tensor2D) : flat;
      routing = this.router.route(rin, ctx.training, sources.tokenMask);
      sharedRouting.set(ctx, routing);
      const { g: g1 } = routing.group1;
      const { g: g2 } = routing.group2;
      ctx.aux.push({ name: 'monet_unif', layer: this.path, value: monetUniformityLoss(g1, g2), coef: this.options.unifCoef });
      ctx.aux.push({ name: 'monet_amb', layer: this.path, value: monetAmbiguityLoss(g1, g2), coef: this.options.ambCoef });
    } else {
      routing = sharedRouting.get(ctx);
      if (!routing)
        throw new MoelabError(
          `monet layer ${this.path || '(root)'} shares its router (routerGroup ${this.options.routerGroup}) but no earlier layer of this forward pass routed`,
        );
      if (routing.n !== n) throw new MoelabError(`monet layer ${this.path}: the shared routing covers ${routing.n} tokens, this layer got ${n}`);
    }
    this.lastRouting = routing;
    const g1 = routing.group1.g;
    const g2 = routing.group2.g;
    const masked = ctx.expertMask?.get(this.path);
    let out: tf.Tensor2D;
    if (masked && masked.size > 0) {
      const E = this.options.experts;
      const keep = new Float32Array(E * E).fill(1);
      for (const id of masked) {
        if (!Number.isInteger(id) || id < 0 || id >= E * E)
          throw new MoelabError(`expert mask id ${id} is out of range [0, ${E * E}) for this monet layer`, this.path);
        keep[id] = 0;
      }
      out = this.moe.forwardScores(flat, tf.mul(monetExpertScores(g1, g2), tf.tensor2d(keep, [E, E])) as tf.Tensor3D);
    } else {
      out = this.moe.forward(flat, g1, g2);
    }
    this.record(ctx, routing, masked);
    return tf.reshape(out, shape);
  }

  /** Routing statistics: expert (i, j) is used by token t when some head selected i in group 1 and j in group 2. */
  private record(ctx: ForwardContext, routing: MonetRouting, masked?: Set<number>): void {
    const { experts: E, heads: H } = this.options;
    const N = E * E;
    const n = routing.n;
    const s1 = routing.group1.sel;
    const s2 = routing.group2.sel;
    const counts = new Array<number>(N).fill(0);
    const mark = new Uint8Array(N);
    const tok: number[] = [];
    const ex: number[] = [];
    let min = Number.POSITIVE_INFINITY;
    let max = 0;
    for (let t = 0; t < n; t++) {
      const used: number[] = [];
      for (let h = 0; h < H; h++) {
        const o = (t * H + h) * E;
        for (let i = 0; i < E; i++) {
          if (!s1[o + i]) continue;
          for (let j = 0; j < E; j++) {
            if (!s2[o + j]) continue;
            const id = i * E + j;
            if (mark[id] || masked?.has(id)) continue;
            mark[id] = 1;
            used.push(id);
          }
        }
      }
      used.sort((a, b) => a - b);
      for (const id of used) {
        mark[id] = 0;
        counts[id]!++;
        tok.push(t);
        ex.push(id);
      }
      min = Math.min(min, used.length);
      max = Math.max(max, used.length);
    }
    const total = tok.length || 1;
    const stats: RoutingStats = {
      layer: this.path,
      numExperts: N,
      tokens: n,
      counts,
      load: counts.map((c) => c / total),
      dropRate: 0,
      expertsPerToken: n > 0 ? tok.length / n : 0,
      expertsPerTokenMin: n > 0 ? min : 0,
      expertsPerTokenMax: max,
      extra: { sigma: this.router?.sigma ?? Number.NaN },
    };
    ctx.routing.push(stats);
    if (ctx.assignments) {
      const list = ctx.assignments.get(this.path) ?? [];
      list.push({ tokenIndex: Int32Array.from(tok), expertIndex: Int32Array.from(ex), tokens: n });
      ctx.assignments.set(this.path, list);
    }
  }
}

const monetSchema = Config({
  experts: Type.Integer({ minimum: 1, default: 16, description: 'experts per group E (= √N; N = E² composed experts per layer)' }),
  expertDim: Type.Integer({ minimum: 1, default: 8, description: 'hidden width m of one composed expert (even for monet-vd)' }),
  heads: Type.Integer({ minimum: 1, default: 4, description: 'routing heads H' }),
  k: Type.Integer({ minimum: 1, default: 2, description: 'target experts per head and group: σ = Φ⁻¹(1 − k/E)' }),
  routerGroup: Type.Integer({
    minimum: 1,
    default: 1,
    description: 'router-sharing period G: layers with index % G == 0 own a router, the next G−1 reuse its routing',
  }),
  activation: Type.Union(
    ACTIVATIONS.map((a) => Type.Literal(a)),
    { default: 'relu2', description: 'expert activation (MONET: squared ReLU)' },
  ),
  unifCoef: Type.Number({ minimum: 0, default: 1e-3, description: 'λ of the uniformity loss L_unif' }),
  ambCoef: Type.Number({ minimum: 0, default: 1e-3, description: 'λ of the ambiguity loss L_amb' }),
  initStd: Type.Number({ exclusiveMinimum: 0, default: 0.02, description: 'std of every Linear weight (HF init); biases start at 0' }),
  bnEps: Type.Number({ exclusiveMinimum: 0, default: 1e-5 }),
  bnMomentum: Type.Number({ minimum: 0, maximum: 1, default: 0.1 }),
});

function monetEntry(decomposition: 'horizontal' | 'vertical') {
  const short = decomposition === 'horizontal' ? 'hd' : 'vd';
  return defineEntry({
    kind: 'ffn',
    name: `monet-${short}`,
    description:
      decomposition === 'horizontal'
        ? 'MONET-HD: E² experts composed from E bottom and E top shards, BatchNorm-threshold routing (router + experts in one layer).'
        : 'MONET-VD: E² experts composed from left/right hidden halves and top/bottom output halves, BatchNorm-threshold routing.',
    reference: `specs/monet.md §3, §${decomposition === 'horizontal' ? 5 : 6}, §8, §9`,
    schema: monetSchema,
    create: (c, ctx) => {
      const d = ctx.need('dModel');
      if (c.k > c.experts) throw new MoelabError(`k = ${c.k} exceeds the experts per group (${c.experts})`, `${ctx.path}.k`);
      if (decomposition === 'vertical' && (d % 2 || c.expertDim % 2))
        throw new MoelabError(`monet-vd needs an even dModel and an even expertDim (got dModel ${d}, expertDim ${c.expertDim})`, ctx.path);
      const layerIndex = typeof ctx.env.layerIndex === 'number' ? ctx.env.layerIndex : 0;
      return new MonetLayer(d, { ...c, decomposition }, layerIndex % c.routerGroup === 0, ctx.rng);
    },
  });
}

export const monetHD = monetEntry('horizontal');
export const monetVD = monetEntry('vertical');
