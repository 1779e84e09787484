/**
 * MLP experts: E independent two-layer feed-forward networks, optionally gated (GLU / SwiGLU).
 *
 *   expert_e(x) = act(x W1[e]) W2[e]                    W1: [E, d, h], W2: [E, h, d]
 *   expert_e(x) = (act(x W1[e]) * (x W3[e])) W2[e]      with glu
 *
 * Both forms go through one core op (`moeMLP`, `moeGLU`), which a backend may implement as one fused
 * kernel (moelab-cpu does, see docs/kernels.md).
 * Docs: docs/routers.md#the-router-contract (the expert bank contract); GLU variants: Shazeer 2020, arXiv 2002.05202.
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
  MoelabError,
  moeGLU,
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
    return moeGLU(x, this.w1 as tf.Tensor3D, this.w3 as tf.Tensor3D, this.w2 as tf.Tensor3D, plan, weight, this.options.activation);
  }

  parametersPerExpert(): number {
    return this.dModel * this.options.hidden * (this.w3 ? 3 : 2);
  }

  /** SMEAR (docs/routers.md#smear): token t runs one MLP with weights sum_e mergeWeight[group[t], e] * W[e]. */
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

const activationSchema = (dflt: Activation) =>
  Type.Union(
    ACTIVATIONS.map((a) => Type.Literal(a)),
    { default: dflt, description: 'expert activation (relu, gelu, silu, relu2 = squared ReLU, ...)' },
  );

const countSchema = Type.Optional(
  Type.Integer({ minimum: 1, description: "number of experts in this bank when it is a moe layer's `shared` bank (routed banks take the layer's count)" }),
);

/** Experts in the bank: the routed layer's count, or `count` for a shared bank (default 1). */
function bankSize(count: number | undefined, numExperts: number | undefined, path: string): number {
  if (count !== undefined && numExperts !== undefined && count !== numExperts)
    throw new MoelabError(`count ${count} differs from the layer's ${numExperts} experts (count is for shared banks; leave it out here)`, `${path}.count`);
  return numExperts ?? count ?? 1;
}

export const mlpExperts = defineEntry({
  kind: 'expert',
  name: 'mlp',
  description: 'Two-layer MLP experts (ReLU, GELU, SiLU, ReLU^2), optionally gated (GLU / SwiGLU).',
  reference: 'docs/routers.md#the-router-contract',
  schema: Config({
    hidden: Type.Integer({ minimum: 1, default: 128, description: 'hidden width of each expert' }),
    activation: activationSchema('gelu'),
    glu: Type.Boolean({ default: false, description: 'gated: act(x W1) * (x W3)' }),
    count: countSchema,
  }),
  create: (c, ctx) =>
    new MLPExperts(ctx.need('dModel'), bankSize(c.count, ctx.env.numExperts, ctx.path), { hidden: c.hidden, activation: c.activation, glu: c.glu }, ctx.rng),
});

/**
 * GLU experts (Shazeer 2020): expert_e(x) = (act(x W1[e]) * (x W3[e])) W2[e]. SiLU gives SwiGLU (the
 * default), GELU GeGLU, ReLU ReGLU. The same bank as `mlp` with `glu: true`.
 */
export const gluExperts = defineEntry({
  kind: 'expert',
  name: 'glu',
  description: 'Gated (GLU) MLP experts: (act(x W1) * x W3) W2; SwiGLU by default (silu), GeGLU (gelu), ReGLU (relu).',
  reference: 'docs/routers.md#the-router-contract; Shazeer 2020, "GLU Variants Improve Transformer", arXiv 2002.05202',
  schema: Config({
    hidden: Type.Integer({ minimum: 1, default: 128, description: 'hidden width of each expert' }),
    activation: activationSchema('silu'),
    count: countSchema,
  }),
  create: (c, ctx) =>
    new MLPExperts(ctx.need('dModel'), bankSize(c.count, ctx.env.numExperts, ctx.path), { hidden: c.hidden, activation: c.activation, glu: true }, ctx.rng),
});

/** One expert of a heterogeneous bank: w1 [d, h], w2 [h, d] (+ w3 [d, h] when gated). */
export class MLPExpert extends Module {
  readonly w1: tf.Variable;
  readonly w2: tf.Variable;
  readonly w3?: tf.Variable;
  constructor(
    readonly dModel: number,
    readonly hidden: number,
    glu: boolean,
    rng: Rng,
  ) {
    super();
    this.w1 = this.param('w1', rng.normalArray(dModel * hidden, 1 / Math.sqrt(dModel)), [dModel, hidden]);
    if (glu) this.w3 = this.param('w3', rng.normalArray(dModel * hidden, 1 / Math.sqrt(dModel)), [dModel, hidden]);
    this.w2 = this.param('w2', rng.normalArray(hidden * dModel, 1 / Math.sqrt(hidden)), [hidden, dModel]);
  }

  forward(x: tf.Tensor2D, activation: Activation): tf.Tensor2D {
    let h = activate(tf.matMul(x, this.w1), activation);
    if (this.w3) h = tf.mul(h, tf.matMul(x, this.w3));
    return tf.matMul(h, this.w2) as tf.Tensor2D;
  }
}

/**
 * Heterogeneous MLP experts: expert e has its own hidden width h_e (children `0`, `1`, ... with
 * `w1 [d, h_e]`, `w2 [h_e, d]`, `w3` when gated). Each expert runs one GEMM pair over the tokens routed to
 * it. `parametersPerExpert()` is the mean expert size (the expected active parameters under uniform
 * routing); the exact per-expert sizes are `sizes`.
 */
export class HeteroMLPExperts extends Module implements ExpertBank {
  readonly experts: MLPExpert[];
  constructor(
    readonly dModel: number,
    readonly hiddenSizes: number[],
    readonly activation: Activation,
    readonly glu: boolean,
    rng: Rng,
  ) {
    super();
    if (hiddenSizes.length === 0) throw new MoelabError('a heterogeneous expert bank needs at least one expert');
    this.experts = hiddenSizes.map((h, e) => this.child(String(e), new MLPExpert(dModel, h, glu, rng)));
  }

  get numExperts(): number {
    return this.experts.length;
  }

  /** Parameters of each expert. */
  get sizes(): number[] {
    return this.hiddenSizes.map((h) => this.dModel * h * (this.glu ? 3 : 2));
  }

  apply(x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, _ctx: ForwardContext): tf.Tensor2D {
    if (plan.size === 0) return tf.mul(x, 0) as tf.Tensor2D;
    const { order, offsets } = plan;
    const outs: tf.Tensor2D[] = [];
    const position = new Int32Array(plan.size); // assignment n -> row of the concatenated expert outputs
    let row = 0;
    for (let e = 0; e < this.numExperts; e++) {
      const ids = order.subarray(offsets[e]!, offsets[e + 1]!);
      if (ids.length === 0) continue;
      const tok = Int32Array.from(ids, (n) => plan.tokenIndex[n]!);
      outs.push(this.experts[e]!.forward(tf.gather(x, tf.tensor1d(tok, 'int32')) as tf.Tensor2D, this.activation));
      for (const n of ids) position[n] = row++;
    }
    const y = tf.gather(outs.length === 1 ? outs[0]! : tf.concat(outs, 0), tf.tensor1d(position, 'int32')) as tf.Tensor2D;
    return combine(y, weight, plan);
  }

  parametersPerExpert(): number {
    const s = this.sizes;
    return s.reduce((a, b) => a + b, 0) / s.length;
  }
}

export const heteroMLPExperts = defineEntry({
  kind: 'expert',
  name: 'mlp-hetero',
  description: 'MLP experts of different hidden sizes (one width per expert), optionally gated.',
  reference: 'docs/routers.md#the-router-contract',
  schema: Config({
    hiddenSizes: Type.Array(Type.Integer({ minimum: 1 }), { minItems: 1, description: 'hidden width of each expert, one entry per expert' }),
    activation: activationSchema('gelu'),
    glu: Type.Boolean({ default: false, description: 'gated: act(x W1) * (x W3)' }),
  }),
  create: (c, ctx) => {
    const E = ctx.env.numExperts;
    if (E !== undefined && c.hiddenSizes.length !== E)
      throw new MoelabError(`hiddenSizes has ${c.hiddenSizes.length} entries but the layer has ${E} experts`, `${ctx.path}.hiddenSizes`);
    return new HeteroMLPExperts(ctx.need('dModel'), c.hiddenSizes, c.activation, c.glu, ctx.rng);
  },
});
