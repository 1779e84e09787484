/**
 * MONET-VD (vertical decomposition): hidden halves a1_i (owned by i), a2_j (owned by j), output halves
 * top (i) and bottom (j); the composed expert's output is the sum of six terms (docs/monet.md#vertical-decomposition), evaluated from the
 * per-shard mixes without forming the E² experts.
 *
 * Parameter names: `moe.u1/u2.{weight,bias}`, `moe.v11/v12/v21/v22.weight`, `moe.b1`, `moe.b2`.
 */
import { type Activation, activate, Linear, Module, MoelabError, type Rng, tf } from '@moelab/core';
import type { MonetExperts } from './expert-bank.js';

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
