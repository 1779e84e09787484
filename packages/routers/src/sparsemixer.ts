/**
 * SparseMixer-v2, the gradient estimator of GRIN (Liu et al. 2024; microsoft/SparseMixer, HF PhiMoE),
 * arXiv 2409.12136; docs/routers.md#sparsemixer. For each of k rounds (k ≤ 2 in GRIN), with r = `jitterEps`:
 *
 *   z* = max_e z_e;   masked_e = (z* − z_e) / max(|z_e|, z*) > 2r          (mask computed without gradient)
 *   π = softmax(z with masked entries = −∞)
 *   train: D ~ Categorical(π) (Gumbel-max);  eval: D = argmax z
 *   ω = 1 if D = argmax π or (train and U > 0.75) else 1/3                (eval: 1)
 *   forward weight w = π_D · ω;   backward (custom): ∂L/∂z = (∂L/∂w) · π_D · (e_D − π)   (ω not in it)
 *   next round: z_D = −∞, threshold recomputed against the new max (|z| of the original logits)
 *
 * The expert outputs are multiplied by w INCLUDING ω, so experts get ω-scaled gradients: this follows the
 * released code; the paper's Algorithm 1 would not scale them (we follow the code). Weights of the rounds do
 * not sum to 1. Aux: Switch loss on softmax(z), coef 1e-3 (PhiMoE config), `balanceScope: 'global'` =
 * GRIN's global load balance over the step's micro-batches. Dropless.
 */
import { Config, defineEntry, type ForwardContext, Module, type RouteInfo, type RouteResult, type Router, type Rng, Type, tf } from '@moelab/core';
import { Balancer, type BalanceOptions, balanceFields } from './balance.js';
import { checkK, planFromChoices } from './common.js';

export interface SparseMixerOptions extends BalanceOptions {
  k: number;
  jitterEps: number;
}

const NEG = -1e30;

/**
 * The discrete part of SparseMixer-v2 on plain arrays: per round the chosen expert, the additive mask
 * (0 or −1e30) and the multiplier ω. Exposed for tests.
 */
export function sparseMixerChoices(z: Float32Array, T: number, E: number, k: number, r: number, training: boolean, rng: Rng) {
  const chosen = new Int32Array(T * k);
  const masks = Array.from({ length: k }, () => new Float32Array(T * E));
  const omega = Array.from({ length: k }, () => new Float32Array(T).fill(1));
  for (let t = 0; t < T; t++) {
    const taken = new Uint8Array(E);
    for (let s = 0; s < k; s++) {
      let zmax = Number.NEGATIVE_INFINITY;
      let argmax = -1;
      for (let e = 0; e < E; e++) if (!taken[e] && z[t * E + e]! > zmax) [zmax, argmax] = [z[t * E + e]!, e];
      const mask = masks[s]!;
      for (let e = 0; e < E; e++) {
        const v = z[t * E + e]!;
        const factor = Math.max(Math.abs(v), zmax);
        if (taken[e] || (zmax - v) / factor > 2 * r) mask[t * E + e] = NEG;
      }
      let d = argmax;
      if (training) {
        // Gumbel-max over the unmasked logits = a sample from π
        let best = Number.NEGATIVE_INFINITY;
        for (let e = 0; e < E; e++) {
          if (mask[t * E + e] !== 0) continue;
          let u = rng.next();
          while (u === 0) u = rng.next();
          const g = z[t * E + e]! - Math.log(-Math.log(u));
          if (g > best) [best, d] = [g, e];
        }
        omega[s]![t] = d === argmax || rng.next() > 0.75 ? 1 : 1 / 3;
      }
      chosen[t * k + s] = d;
      taken[d] = 1;
    }
  }
  return { chosen, masks, omega };
}

/** w[t, s] = π^(s)_{D_s} · ω_s with the custom gradient π_D (e_D − π) w.r.t. the logits (ω excluded). */
export function sparseMixerWeights(logits: tf.Tensor2D, chosen: Int32Array, masks: Float32Array[], omega: Float32Array[]): tf.Tensor2D {
  const [T, E] = logits.shape;
  const k = masks.length;
  const oneHots = masks.map(
    (_, s) =>
      tf
        .oneHot(
          tf.tensor1d(
            Int32Array.from({ length: T }, (_, t) => chosen[t * k + s]!),
            'int32',
          ),
          E,
        )
        .toFloat() as tf.Tensor2D,
  );
  const maskT = masks.map((m) => tf.tensor2d(m, [T, E]));
  const omegaT = omega.map((o) => tf.tensor1d(o));
  const f = tf.customGrad(((z: tf.Tensor, save: tf.GradSaveFunc) => {
    const pis = maskT.map((m) => tf.softmax(tf.add(z, m)) as tf.Tensor2D);
    const pd = pis.map((p, s) => tf.sum(tf.mul(p, oneHots[s]!), 1));
    // the one-hot selections go through `save` too: tensors only captured by the closure are disposed
    // when the forward scope of tf.grad / variableGrads ends, before the backward pass runs
    save([...pis, ...pd, ...oneHots]);
    const value = tf.stack(
      pd.map((p, s) => tf.mul(p, omegaT[s]!)),
      1,
    );
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        let g: tf.Tensor = tf.zerosLike(z);
        for (let s = 0; s < k; s++) {
          const pi = saved[s]!;
          const piD = saved[k + s]!;
          const up = tf.mul(tf.reshape(tf.slice(dy, [0, s], [T, 1]), [T]), piD);
          g = tf.add(g, tf.mul(tf.reshape(up, [T, 1]), tf.sub(saved[2 * k + s]!, pi)));
        }
        return [g];
      },
    };
    // tfjs types customGrad's callback with variadic `(Tensor | GradSaveFunc)[]` parameters.
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(logits) as tf.Tensor2D;
}

export class SparseMixerRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: SparseMixerOptions,
    rng: Rng,
  ) {
    super();
    this.weight = this.param('weight', rng.normalArray(numExperts * dModel, 1 / Math.sqrt(dModel)), [numExperts, dModel]);
    this.balancer = new Balancer(options);
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const { k, jitterEps } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = tf.matMul(x, this.weight, false, true) as tf.Tensor2D;
    const { chosen, masks, omega } = sparseMixerChoices(logits.dataSync() as Float32Array, T, E, k, jitterEps, ctx.training, ctx.rng);
    const w = sparseMixerWeights(logits, chosen, masks, omega); // [T, k]
    const { plan } = planFromChoices(chosen, T, k, E);
    const weight = tf.reshape(tf.transpose(w), [T * k]) as tf.Tensor1D; // slot-major like the plan
    const probs = tf.softmax(logits) as tf.Tensor2D;
    this.balancer.push(ctx, this.path, probs, plan, k, info, logits);
    return { plan, weight, probs, logits };
  }

  override afterStep(): void {
    this.balancer.resetGlobal();
  }
}

export const sparseMixer = defineEntry({
  kind: 'router',
  name: 'sparsemixer',
  description: "GRIN's SparseMixer-v2: masked-softmax sampling of each expert (training), custom gradient π_D(e_D − π), ω ∈ {1, 1/3}; eval = top-k.",
  reference: 'docs/routers.md#sparsemixer; arXiv 2409.12136',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 2, description: 'rounds = experts per token (GRIN: 2)' }),
    jitterEps: Type.Number({
      minimum: 0,
      default: 0.01,
      description: 'r: logits within a 2r relative band of the max stay samplable (PhiMoE router_jitter_noise 0.01)',
    }),
    ...balanceFields(1e-3),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    return new SparseMixerRouter(ctx.need('dModel'), E, c, ctx.rng);
  },
});
