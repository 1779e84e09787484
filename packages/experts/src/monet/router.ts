/**
 * MONET's router (one per routing group of G layers; layers L with L % G != 0 reuse the last router's g1, g2):
 *
 *   z_K = (w_K x) as [H, E]            zn = BatchNorm per head over all tokens and experts (no affine)
 *   σ = Φ⁻¹(1 − k/E)                   sel = zn ≥ min(max_e zn, σ)      (≥ 1 expert per head)
 *   g_K[h, e] = softmax of the raw z over the selected set, 0 elsewhere
 *
 * Train mode normalises with batch statistics and updates the running buffers (momentum 0.1, unbiased
 * variance); eval mode uses the buffers. BN only feeds the mask: no gradient flows through it.
 * Parameter names: `router.w1.weight`, `router.w2.weight`, `router.norm{1,2}.running_{mean,var}`.
 */
import { Linear, Module, MoelabError, type Rng, tf } from '@moelab/core';
import { normalQuantile } from './quantile.js';

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

/** MONET's router: two groups of H·E expert embeddings with BatchNorm-threshold selection (docs/monet.md#router). */
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
   * `tokenMask` entry is 1, default all; masking padding keeps it out of the statistics) and the running
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
    if (tokenMask && tokenMask.length !== n)
      throw new MoelabError(`the monet router's token mask has ${tokenMask.length} entries for ${n} tokens`, this.path || undefined);
    const z = tf.reshape(w.forward(x), [n, H, E]) as tf.Tensor3D;
    const zd = z.dataSync();
    const mean = new Float64Array(H);
    const varBiased = new Float64Array(H);
    if (training) {
      let count = 0;
      for (let t = 0; t < n; t++) if (!tokenMask || tokenMask[t]) count++;
      if (count === 0) throw new MoelabError('the monet router has no token to take batch statistics from', this.path || undefined);
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
