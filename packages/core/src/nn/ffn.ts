import type { ForwardContext } from '../module.js';
import { Module } from '../module.js';
import type { Rng } from '../rng.js';
import { tf } from '../tf.js';
import { type Activation, activate } from './activations.js';
import { Linear } from './layers.js';
import type { FeedForward } from './moe.js';

/**
 * Dense feed-forward block: W2 act(W1 x), or with `glu` the gated form W2 (act(W1 x) * W3 x)
 * (SwiGLU = glu + silu). Names w1/w2/w3 follow the LLaMA convention.
 */
export class DenseFFN extends Module implements FeedForward {
  readonly w1: Linear;
  readonly w2: Linear;
  readonly w3?: Linear;
  constructor(
    dModel: number,
    readonly hidden: number,
    readonly activation: Activation,
    glu: boolean,
    rng: Rng,
    bias = false,
  ) {
    super();
    this.w1 = this.child('w1', new Linear(dModel, hidden, rng, { bias }));
    if (glu) this.w3 = this.child('w3', new Linear(dModel, hidden, rng, { bias }));
    this.w2 = this.child('w2', new Linear(hidden, dModel, rng, { bias, std: 1 / Math.sqrt(hidden) }));
  }

  forward(x: tf.Tensor, _ctx: ForwardContext): tf.Tensor {
    let h = activate(this.w1.forward(x), this.activation);
    if (this.w3) h = tf.mul(h, this.w3.forward(x));
    return this.w2.forward(h);
  }
}
