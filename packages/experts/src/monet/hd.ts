/**
 * MONET-HD (horizontal decomposition): E_ij(x) = V_j relu2(U_i x + bu_i) + c_j,
 * out = Σ_h Σ_ij g1[h,i] g2[h,j] E_ij(x), computed without forming the E² experts as
 *
 *   a = relu2(U x + bu) [E, m];  s[h] = Σ_i g1[h,i] a_i;  y_j = Σ_h g2[h,j] s[h];  out = Σ_j V_j y_j + Σ_j w2_j c_j
 *
 * Parameter names: `moe.u.weight`, `moe.u.bias`, `moe.v.weight`, `moe.b`.
 */
import { type Activation, activate, Linear, Module, type Rng, tf } from '@moelab/core';
import type { MonetExperts } from './expert-bank.js';

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
