/**
 * Basic layers. Weights are stored as PyTorch does (`Linear.weight` is [out, in]) so that state_dict
 * names and shapes match the official implementations.
 */
import { Module } from '../module.js';
import { LAYER_NORM_KERNEL, type LayerNormAttrs, type LayerNormInputs } from '../kernels/contract.js';
import { hasKernel } from '../ops/kernel.js';
import type { Rng } from '../rng.js';
import { tf } from '../tf.js';

/** Flatten all leading dimensions: [..., d] -> [N, d]. */
export function flatten2d(x: tf.Tensor): tf.Tensor2D {
  const d = x.shape[x.rank - 1]!;
  return tf.reshape(x, [-1, d]) as tf.Tensor2D;
}

export interface LinearOptions {
  bias?: boolean;
  /** Standard deviation of the normal init; default 1/sqrt(in) (PyTorch-like scale). */
  std?: number;
}

export class Linear extends Module {
  readonly weight: tf.Variable;
  readonly bias?: tf.Variable;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    rng: Rng,
    opts: LinearOptions = {},
  ) {
    super();
    const std = opts.std ?? 1 / Math.sqrt(inFeatures);
    this.weight = this.param('weight', rng.normalArray(outFeatures * inFeatures, std), [outFeatures, inFeatures]);
    if (opts.bias) this.bias = this.param('bias', new Float32Array(outFeatures), [outFeatures]);
  }

  /** The matrix product only (biases are not counted: {@link Module.flopsPerToken}). */
  override flopsPerToken(_seqLen: number): number {
    return 2 * this.inFeatures * this.outFeatures;
  }

  forward(x: tf.Tensor): tf.Tensor {
    if (x.rank > 2 && !tf.engine().isTapeOn()) {
      // No gradient recorded (inference): x [..., in] goes to the product as it is, the weight
      // broadcast over the leading axes: one kernel instead of flatten, product and unflatten, which
      // counts when a decoding step is ~60 kernels on one token. With a tape the rows are flattened:
      // tfjs's BatchMatMul gradient does not sum over broadcast batch axes.
      const y = tf.matMul(x, this.weight, false, true);
      return this.bias ? tf.add(y, this.bias) : y;
    }
    const lead = x.shape.slice(0, -1);
    const y2 = tf.matMul(flatten2d(x), this.weight, false, true);
    const y = this.bias ? tf.add(y2, this.bias) : y2;
    return tf.reshape(y, [...lead, this.outFeatures]);
  }
}

export class Embedding extends Module {
  readonly weight: tf.Variable;
  constructor(
    readonly numEmbeddings: number,
    readonly dim: number,
    rng: Rng,
    std = 1,
  ) {
    super();
    this.weight = this.param('weight', rng.normalArray(numEmbeddings * dim, std), [numEmbeddings, dim]);
  }

  /** A lookup: no multiply-accumulates. */
  override macsPerToken(_seqLen: number): number {
    return 0;
  }

  forward(ids: tf.Tensor): tf.Tensor {
    const flat = tf.reshape(ids, [-1]);
    return tf.reshape(tf.gather(this.weight, flat), [...ids.shape, this.dim]);
  }
}

/** A normalisation layer over the last dimension. */
export interface Norm extends Module {
  forward(x: tf.Tensor): tf.Tensor;
}

export class LayerNorm extends Module implements Norm {
  readonly weight: tf.Variable;
  readonly bias?: tf.Variable;
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
    withBias = true,
  ) {
    super();
    this.weight = this.param('weight', new Float32Array(dim).fill(1), [dim]);
    if (withBias) this.bias = this.param('bias', new Float32Array(dim), [dim]);
  }

  /** Norms are not counted ({@link Module.flopsPerToken}). */
  override flopsPerToken(_seqLen: number): number {
    return 0;
  }

  forward(x: tf.Tensor): tf.Tensor {
    // The backend's fused LayerNorm when it has one (LAYER_NORM_KERNEL in the kernel contract).
    if (x.rank >= 1 && hasKernel(LAYER_NORM_KERNEL)) {
      const inputs: LayerNormInputs<tf.Tensor> = this.bias ? { x, gamma: this.weight, beta: this.bias } : { x, gamma: this.weight };
      const [y, mean, rstd] = tf
        .engine()
        .runKernel(
          LAYER_NORM_KERNEL,
          inputs as unknown as tf.NamedTensorMap,
          { eps: this.eps, hasBeta: !!this.bias } satisfies LayerNormAttrs as unknown as tf.NamedAttrMap,
        ) as tf.Tensor[];
      // The statistics are the backward kernel's (saved through the gradient's outputsToSave).
      tf.dispose([mean!, rstd!]);
      return y!;
    }
    const { mean, variance } = tf.moments(x, -1, true);
    const y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, this.eps)));
    const scaled = tf.mul(y, this.weight);
    return this.bias ? tf.add(scaled, this.bias) : scaled;
  }
}

export class RMSNorm extends Module implements Norm {
  readonly weight: tf.Variable;
  constructor(
    readonly dim: number,
    readonly eps = 1e-6,
  ) {
    super();
    this.weight = this.param('weight', new Float32Array(dim).fill(1), [dim]);
  }

  /** Norms are not counted ({@link Module.flopsPerToken}). */
  override flopsPerToken(_seqLen: number): number {
    return 0;
  }

  forward(x: tf.Tensor): tf.Tensor {
    const ms = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, this.eps))), this.weight);
  }
}

/** Inverted dropout driven by our seeded RNG (identical across backends). */
export function dropout(x: tf.Tensor, rate: number, rng: Rng, training: boolean): tf.Tensor {
  if (!training || rate <= 0) return x;
  const n = x.size;
  const mask = new Float32Array(n);
  const keep = 1 - rate;
  for (let i = 0; i < n; i++) mask[i] = rng.next() < keep ? 1 / keep : 0;
  return tf.mul(x, tf.tensor(mask, x.shape));
}
