/**
 * MLP experts: E independent two-layer feed-forward networks, optionally gated (GLU / SwiGLU).
 *
 *   expert_e(x) = act(x W1[e]) W2[e]                    W1: [E, d, h], W2: [E, h, d]
 *   expert_e(x) = (act(x W1[e]) * (x W3[e])) W2[e]      with glu
 *
 * The ungated form goes through core's `moeMLP` op, which a backend may implement as one fused kernel.
 * Spec: specs/routers.md §2 (expert contract); GLU variants: Shazeer 2020.
 */
import {
  ACTIVATIONS,
  type Activation,
  activate,
  Config,
  combine,
  DispatchPlan,
  defineEntry,
  type ExpertBank,
  type ForwardContext,
  gatherPadded,
  Module,
  moeMLP,
  type Rng,
  Type,
  tf,
  ungatherPadded,
} from '@moelab/core';

export interface MLPExpertOptions {
  hidden: number;
  activation: Activation;
  glu: boolean;
}

export class MLPExperts extends Module implements ExpertBank {
  readonly w1: tf.Variable;
  readonly w2: tf.Variable;
  readonly w3?: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: MLPExpertOptions,
    rng: Rng,
  ) {
    super();
    const { hidden } = options;
    const E = numExperts;
    this.w1 = this.param('w1', rng.normalArray(E * dModel * hidden, 1 / Math.sqrt(dModel)), [E, dModel, hidden]);
    if (options.glu) this.w3 = this.param('w3', rng.normalArray(E * dModel * hidden, 1 / Math.sqrt(dModel)), [E, dModel, hidden]);
    this.w2 = this.param('w2', rng.normalArray(E * hidden * dModel, 1 / Math.sqrt(hidden)), [E, hidden, dModel]);
  }

  apply(x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, _ctx: ForwardContext): tf.Tensor2D {
    if (!this.w3) return moeMLP(x, this.w1 as tf.Tensor3D, this.w2 as tf.Tensor3D, plan, weight, this.options.activation);
    if (plan.size === 0) return tf.mul(x, 0) as tf.Tensor2D;
    const { xs, assignmentRow } = gatherPadded(x, plan);
    const h = tf.mul(activate(tf.matMul(xs, this.w1 as tf.Tensor3D), this.options.activation), tf.matMul(xs, this.w3 as tf.Tensor3D)) as tf.Tensor3D;
    return combine(ungatherPadded(tf.matMul(h, this.w2 as tf.Tensor3D) as tf.Tensor3D, assignmentRow), weight, plan);
  }

  parametersPerExpert(): number {
    return this.dModel * this.options.hidden * (this.w3 ? 3 : 2);
  }

  /** SMEAR (specs/routers.md R16): token t runs one MLP with weights sum_e mergeWeight[group[t], e] * W[e]. */
  applyMerged(x: tf.Tensor2D, mergeWeight: tf.Tensor2D, group: Int32Array, _ctx: ForwardContext): tf.Tensor2D {
    const G = mergeWeight.shape[0];
    const merge = (w: tf.Variable) => tf.reshape(tf.matMul(mergeWeight, tf.reshape(w, [this.numExperts, -1])), [G, w.shape[1]!, w.shape[2]!]) as tf.Tensor3D;
    const T = x.shape[0];
    const plan = new DispatchPlan(
      Int32Array.from({ length: T }, (_, t) => t),
      group,
      T,
      G,
    );
    const { xs, assignmentRow } = gatherPadded(x, plan);
    let h = activate(tf.matMul(xs, merge(this.w1)), this.options.activation) as tf.Tensor3D;
    if (this.w3) h = tf.mul(h, tf.matMul(xs, merge(this.w3))) as tf.Tensor3D;
    return combine(ungatherPadded(tf.matMul(h, merge(this.w2)) as tf.Tensor3D, assignmentRow), null, plan);
  }
}

export const mlpExperts = defineEntry({
  kind: 'expert',
  name: 'mlp',
  description: 'Two-layer MLP experts (ReLU, GELU, SiLU, ReLU^2), optionally gated (GLU / SwiGLU).',
  reference: 'specs/routers.md §2',
  schema: Config({
    hidden: Type.Integer({ minimum: 1, default: 128, description: 'hidden width of each expert' }),
    activation: Type.Union(
      ACTIVATIONS.map((a) => Type.Literal(a)),
      { default: 'gelu' },
    ),
    glu: Type.Boolean({ default: false, description: 'gated: act(x W1) * (x W3)' }),
  }),
  create: (c, ctx) => new MLPExperts(ctx.need('dModel'), ctx.env.numExperts ?? 1, c, ctx.rng),
});
