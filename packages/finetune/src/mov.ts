/**
 * MoV, Mixture of (IA)³ Vectors (Zadouri et al., ICLR 2024, arXiv 2309.05444; official code
 * for-ai/parameter-efficient-moe), docs/finetune.md#mov: E learned scaling vectors v_i ∈ R^{n} mixed per
 * token by a router that reads the activation a it scales,
 *
 *   π = softmax(W_r a),   a ← a ⊙ Σ_i π_i v_i,   W_r ∈ R^{E×n} (no bias, N(0, 0.02²)),  v_i = 1 at init
 *
 * Soft merging over all vectors, no aux loss. Identity at init (Σ π = 1, v_i = 1; computed as
 * a + a ⊙ Σ_i π_i (v_i − 1), so that it is exact in floating point too). Attaches to a Linear's
 * output (keys and values by default) or its input (`side: 'input'`: e.g. a dense FFN's intermediate
 * activation, the input of w2). Trainable per site: E·n + n·E. With E = 1 it is (IA)³, which folds
 * into the Linear's weight.
 */
import { Config, type ForwardContext, type Rng, Type, tf } from '@moelab/core';
import { ActivationScaleAdapter, type AdapterSite, defineAdapter } from './adapter.js';

export interface MoVOptions {
  experts: number;
  side: 'input' | 'output';
  routerStd: number;
}

export class MoV extends ActivationScaleAdapter {
  readonly side: 'input' | 'output';
  readonly vectors: tf.Variable;
  readonly router: tf.Variable;

  constructor(
    site: AdapterSite<'activation-scale'>,
    readonly options: MoVOptions,
    rng: Rng,
  ) {
    super(site.path);
    this.side = options.side;
    const n = options.side === 'input' ? site.module.inFeatures : site.module.outFeatures;
    const E = options.experts;
    this.vectors = this.param('mov_scaling', new Float32Array(E * n).fill(1), [E, n]);
    this.router = this.param('router', rng.normalArray(E * n, options.routerStd), [E, n]);
  }

  scale(a: tf.Tensor2D, _ctx: ForwardContext): tf.Tensor2D {
    // a ⊙ Σ π_i v_i computed as a + a ⊙ Σ π_i (v_i − 1): equal when Σ π = 1, and exactly a at init even
    // though a float softmax sums to 1 only within rounding.
    const pi = tf.softmax(tf.matMul(a, this.router, false, true));
    return tf.add(a, tf.mul(a, tf.matMul(pi, tf.sub(this.vectors, 1)))) as tf.Tensor2D;
  }

  mergedScale(): tf.Tensor1D | string {
    if (this.options.experts !== 1)
      return `MoV with ${this.options.experts} vectors mixes them per token (the router reads the activation), so no fixed scale exists`;
    return tf.reshape(this.vectors, [-1]) as tf.Tensor1D;
  }
}

export const movAdapter = defineAdapter({
  name: 'mov',
  description: "MoV: a per-token softmax mixture of (IA)³ scaling vectors on a Linear's output (default: keys and values) or input.",
  reference: 'arXiv 2309.05444; for-ai/parameter-efficient-moe; docs/finetune.md#mov',
  attachment: 'activation-scale',
  targets: ['*.attention.k_proj', '*.attention.v_proj'],
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 10, description: 'E, the number of scaling vectors (1 = (IA)³)' }),
    side: Type.Union([Type.Literal('output'), Type.Literal('input')], { default: 'output', description: "scale the Linear's output or its input" }),
    routerStd: Type.Number({ minimum: 0, default: 0.02, description: 'init std of the router' }),
  }),
  build: (c, site, rng) => new MoV(site, c, rng),
});
