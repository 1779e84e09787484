/**
 * Load-balancing auxiliary losses (docs/routers.md#balancing-losses). Every loss is returned UNSCALED; routers push
 * it to `ctx.aux` with its coefficient and the trainer adds coef·value.
 *
 * Canonical Switch loss ("all-k, divided by K", Megablocks / Megatron / DeepSeekMoE form):
 *
 *   L_lb = E / (K·N) · Σ_e count_e · P_e          count_e = assignments to e (before drops), P_e = mean_t p_t,e
 *
 * = 1 under uniform routing. Options: `counts: 'first'` (GShard / mesh-TF: first choices only, K = 1),
 * `parity: 'hf'` (HF Mixtral/OLMoE `load_balancing_loss_func`: K × canonical), `scope: 'sequence'`
 * (per-sequence canonical loss averaged over sequences: DeepSeek-V3's complementary sequence-wise loss,
 * docs/routers.md#deepseek-v3), `scope: 'global'` (counts accumulated over the micro-batches of one optimiser step).
 * Mean-gate form (`usage: 'gates'`, BTX, arXiv 2403.07816 §2): the hard counts are replaced by the mean of the
 * sparse (renormalised) gate values, which carries gradient,
 *
 *   L_lb = E · Σ_e u_e · P_e          u_e = mean_t g_t,e (0 where e is not selected), P_e = mean_t p_t,e
 *
 * = 1 under uniform routing with renormalised gates, like the canonical form.
 * Also: z-loss (ST-MoE), importance CV² (Shazeer 2017), DeepSeekMoE device-level loss.
 */
import { type DispatchPlan, type ForwardContext, type RouteInfo, Type, tf, zLoss } from '@moelab/core';
import { sequenceLayout } from './common.js';

/** Per-expert assignment counts of a plan; `first` counts only each token's first choice. */
export function assignmentCounts(plan: DispatchPlan, first = false): Float32Array {
  const E = plan.numExperts;
  const c = new Float32Array(E);
  if (!first) {
    for (let e = 0; e < E; e++) c[e] = plan.counts[e]!;
    return c;
  }
  const seen = new Uint8Array(plan.numTokens);
  for (let n = 0; n < plan.size; n++) {
    const t = plan.tokenIndex[n]!;
    if (seen[t]) continue;
    seen[t] = 1;
    c[plan.expertIndex[n]!]!++;
  }
  return c;
}

/** E / (k·N) · Σ_e counts_e · mean_t probs[t, e]. With counts summing to k·N and uniform routing: 1. */
export function switchLoss(probs: tf.Tensor2D, counts: ArrayLike<number>, k: number): tf.Scalar {
  const [N, E] = probs.shape;
  const P = tf.mean(probs, 0);
  return tf.mul(E / (k * Math.max(1, N)), tf.sum(tf.mul(P, tf.tensor1d(Float32Array.from(counts))))) as tf.Scalar;
}

/** Mean over sequences of the per-sequence canonical loss: rows of probs are [B, T] row-major. */
export function sequenceSwitchLoss(probs: tf.Tensor2D, plan: DispatchPlan, B: number, T: number, k: number, first = false): tf.Scalar {
  const E = probs.shape[1];
  const counts = new Float32Array(B * E);
  const seen = new Uint8Array(plan.numTokens);
  for (let n = 0; n < plan.size; n++) {
    const t = plan.tokenIndex[n]!;
    if (first) {
      if (seen[t]) continue;
      seen[t] = 1;
    }
    counts[Math.floor(t / T) * E + plan.expertIndex[n]!]!++;
  }
  const P = tf.mean(tf.reshape(probs, [B, T, E]), 1); // [B, E]
  return tf.mul(E / (k * T * B), tf.sum(tf.mul(P, tf.tensor2d(counts, [B, E])))) as tf.Scalar;
}

/** E · Σ_e mean_t gates[t, e] · mean_t probs[t, e]: BTX's load-balancing loss on the sparse gate values [N, E]. */
export function meanGateLoss(probs: tf.Tensor2D, gates: tf.Tensor2D): tf.Scalar {
  const E = probs.shape[1];
  return tf.mul(E, tf.sum(tf.mul(tf.mean(gates, 0), tf.mean(probs, 0)))) as tf.Scalar;
}

/** CV(v)² = var(v) / mean(v)² (population variance, eps 1e-10), as in Shazeer et al.'s cv_squared. */
export function cvSquared(v: tf.Tensor1D): tf.Scalar {
  const mean = tf.mean(v);
  const variance = tf.mean(tf.square(tf.sub(v, mean)));
  return tf.div(variance, tf.add(tf.square(mean), 1e-10)) as tf.Scalar;
}

/** Importance loss: CV² of Σ_t G_t,e (G = the sparse gates [N, E]). */
export function importanceLoss(gates: tf.Tensor2D): tf.Scalar {
  return cvSquared(tf.sum(gates, 0) as tf.Tensor1D);
}

/**
 * DeepSeekMoE device-level balance loss: experts split into D equal contiguous groups ("devices"),
 * f'_d = mean of f_i over the group, P'_d = sum of P_i over the group, L = Σ_d f'_d P'_d, with
 * f_i = E/(K·N)·count_i (so L = 1 under uniform routing, like the expert-level loss).
 */
export function deviceBalanceLoss(probs: tf.Tensor2D, counts: ArrayLike<number>, k: number, devices: number): tf.Scalar {
  const [N, E] = probs.shape;
  const per = E / devices;
  const f = new Float32Array(devices);
  for (let e = 0; e < E; e++) f[Math.floor(e / per)]! += ((E / (k * N)) * counts[e]!) / per;
  const P = tf.sum(tf.reshape(tf.mean(probs, 0), [devices, per]), 1);
  return tf.sum(tf.mul(P, tf.tensor1d(f))) as tf.Scalar;
}

export type BalanceScope = 'batch' | 'sequence' | 'global';

/** Schema fields of the Switch-style balance loss that every token-choice router exposes. */
export function balanceFields(defaultCoef: number, defaultCounts: 'all' | 'first' = 'all') {
  return {
    balanceCoef: Type.Number({ minimum: 0, default: defaultCoef, description: 'weight of the Switch load-balancing loss (canonical form: 1 = uniform)' }),
    balanceCounts: Type.Union([Type.Literal('all'), Type.Literal('first')], {
      default: defaultCounts,
      description: 'f counts all k choices (÷k; Megablocks, Megatron, DeepSeek) or first choices only (GShard, mesh-TF)',
    }),
    balanceScope: Type.Union([Type.Literal('batch'), Type.Literal('sequence'), Type.Literal('global')], {
      default: 'batch',
      description: 'f over the micro-batch, per sequence (DeepSeek-V3 sequence-wise), or over all micro-batches of the step',
    }),
    balanceParity: Type.Union([Type.Literal('canonical'), Type.Literal('hf')], {
      default: 'canonical',
      description: 'hf = HF Mixtral/OLMoE form, k × canonical (for checkpoint-parity coefficients)',
    }),
    zLossCoef: Type.Number({ minimum: 0, default: 0, description: 'router z-loss weight (ST-MoE: 1e-3)' }),
  };
}

export interface BalanceOptions {
  balanceCoef: number;
  /** What stands for the load: assignment counts (Switch) or the mean sparse gate value (BTX); default counts. */
  balanceUsage?: 'counts' | 'gates';
  balanceCounts: 'all' | 'first';
  balanceScope: BalanceScope;
  balanceParity: 'canonical' | 'hf';
  zLossCoef: number;
}

/**
 * Pushes the Switch balance loss and the z-loss of one router call (training only). Keeps the running
 * counts of `scope: 'global'` between calls; `resetGlobal()` (called after each optimiser step) clears them.
 */
export class Balancer {
  private running?: Float32Array;

  constructor(readonly options: BalanceOptions) {}

  /** Whether {@link push} reads the routing distribution in this forward pass (training with a balance loss). */
  needsProbs(ctx: ForwardContext): boolean {
    return !!ctx.training && this.options.balanceCoef > 0;
  }

  /** `probs` may be left out when {@link needsProbs} is false. */
  push(
    ctx: ForwardContext,
    layer: string,
    probs: tf.Tensor2D | undefined,
    plan: DispatchPlan,
    k: number,
    info?: RouteInfo,
    logits?: tf.Tensor2D,
    gates?: () => tf.Tensor2D,
  ): void {
    if (!ctx.training) return;
    const o = this.options;
    const kk = o.balanceCounts === 'first' ? 1 : k;
    const scale = o.balanceParity === 'hf' ? kk : 1;
    if (o.balanceCoef > 0) {
      if (!probs) throw new Error('the balance loss needs the routing distribution (a router left it out although needsProbs() was true)');
      let value: tf.Scalar;
      if (o.balanceUsage === 'gates') {
        if (!gates) throw new Error('balanceUsage "gates" needs the router to pass its gate values');
        value = meanGateLoss(probs, gates());
      } else if (o.balanceScope === 'sequence') {
        const { B, T } = sequenceLayout(probs.shape[0], info?.batchShape);
        value = sequenceSwitchLoss(probs, plan, B, T, kk, o.balanceCounts === 'first');
      } else {
        let counts = assignmentCounts(plan, o.balanceCounts === 'first');
        let n = 1;
        if (o.balanceScope === 'global') {
          const run = this.running ?? new Float32Array(counts.length);
          for (let e = 0; e < counts.length; e++) run[e]! += counts[e]!;
          this.running = run;
          // running totals, rescaled to this call's token count so the uniform value stays 1
          const tot = run.reduce((a, b) => a + b, 0);
          const here = counts.reduce((a, b) => a + b, 0);
          counts = run.map((c) => (tot > 0 ? (c * here) / tot : 0));
          n = 1;
        }
        value = switchLoss(probs, counts, kk * n);
      }
      ctx.aux.push({ name: 'switch_balance', layer, value: scale === 1 ? value : (tf.mul(value, scale) as tf.Scalar), coef: o.balanceCoef });
    }
    if (o.zLossCoef > 0 && logits) ctx.aux.push({ name: 'z_loss', layer, value: zLoss(logits), coef: o.zLossCoef });
  }

  resetGlobal(): void {
    this.running = undefined;
  }
}
