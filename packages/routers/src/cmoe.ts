/**
 * CMoE's analytical router (Pei et al., arXiv 2502.04416; official code JarvisPei/CMoE), docs/routers.md#cmoe-analytic.
 * Every routed expert is a group of a dense SwiGLU FFN's neurons with a representative neuron r_e; the
 * router scores a token by that neuron's activation, built from its normalised gate and up rows ĝ, û:
 *
 *   score_e(x) = | (x·û_e) · silu(x·ĝ_e) |        s = softmax(score)
 *   S = TopK(s + b)   (b: aux-loss-free balancing bias, selection only)      weight w_e = 1 + γ_e · s_e
 *
 * ĝ, û are buffers (`gate_rep`, `up_rep` [E, d]) written by the `cmoe` upcycler; γ [E] is trainable and
 * starts at 0, so the freshly carved model uses weight exactly 1 (with every group active it is the dense FFN).
 */
import { Config, defineEntry, type ForwardContext, Module, MoelabError, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { BiasController, checkK, gatherAt, planFromChoices, topkRows } from './common.js';

export class CMoERouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly gateRep: tf.Variable;
  readonly upRep: tf.Variable;
  readonly gamma: tf.Variable;
  readonly bias: BiasController;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly k: number,
    biasUpdateRate: number,
    rng: Rng,
  ) {
    super();
    if (k > numExperts) throw new MoelabError(`k = ${k} exceeds the number of experts (${numExperts})`);
    const unit = (n: number) => {
      const a = rng.normalArray(n * dModel);
      for (let e = 0; e < n; e++) {
        const row = a.subarray(e * dModel, (e + 1) * dModel);
        const norm = Math.hypot(...row) || 1;
        for (let j = 0; j < dModel; j++) row[j] = row[j]! / norm;
      }
      return a;
    };
    this.gateRep = this.buffer('gate_rep', unit(numExperts), [numExperts, dModel]);
    this.upRep = this.buffer('up_rep', unit(numExperts), [numExperts, dModel]);
    this.gamma = this.param('gamma', new Float32Array(numExperts), [numExperts]);
    this.bias = new BiasController(this.buffer('e_score_correction_bias', new Float32Array(numExperts), [numExperts]), biasUpdateRate);
  }

  get expertsPerToken(): number {
    return this.k;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext): RouteResult {
    const T = x.shape[0];
    const E = this.numExperts;
    const probs = tf.tidy(() => {
      const g = tf.matMul(x, this.gateRep, false, true);
      const u = tf.matMul(x, this.upRep, false, true);
      return tf.softmax(tf.abs(tf.mul(u, tf.mul(g, tf.sigmoid(g))))) as tf.Tensor2D;
    });
    const choices = topkRows(this.bias.shift(probs).dataSync(), T, E, this.k);
    const { plan, flat } = planFromChoices(choices, T, this.k, E);
    const s = gatherAt(probs, flat);
    const weight = tf.add(1, tf.mul(tf.gather(this.gamma, tf.tensor1d(plan.expertIndex, 'int32')), s)) as tf.Tensor1D;
    this.bias.record(plan, ctx);
    return { plan, weight, probs, extra: this.bias.stats() };
  }

  override afterStep(): void {
    this.bias.update();
  }
}

export const cmoeAnalytic = defineEntry({
  kind: 'router',
  name: 'cmoe-analytic',
  description: "CMoE's analytical router: |(x·û)·silu(x·ĝ)| of each group's representative neuron, softmax, top-k on s + b, weight 1 + γ·s (γ = 0 at start).",
  reference: 'docs/routers.md#cmoe-analytic; arXiv 2502.04416',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 2, description: 'routed experts per token (CMoE: 2)' }),
    biasUpdateRate: Type.Number({ minimum: 0, default: 1e-3, description: 'step of the balancing bias after each optimiser step (CMoE: 0.001)' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    return new CMoERouter(ctx.need('dModel'), E, c.k, c.biasUpdateRate, ctx.rng);
  },
});
