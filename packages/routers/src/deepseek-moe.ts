/**
 * DeepSeekMoE router (Dai et al. 2024, arXiv 2401.06066; DeepSeek-V2, arXiv 2405.04434), docs/routers.md#deepseek-moe.
 *
 *   s_t = softmax(W u_t) over the N' routed experts
 *   g_e = s_t,e for e in TopK'(s_t), else 0          raw (norm_topk_prob = false); `renormalize` optional
 *   h = u + Σ_shared FFN(u) + Σ_e g_e FFN_e(u)
 *
 * Fine-grained segmentation and shared experts are layer structure: give the `moe` layer many small
 * experts (`experts: mN − K_s`, expert `hidden: h/m`) and a `shared` expert bank (always on, outside the
 * router). Device-limited routing (V2): experts are split into `devices` equal groups; a token may only use
 * experts of its `deviceLimit` best devices (ranked by their highest affinity). Aux (unscaled, training):
 * expert-level loss (canonical Switch form, α1 `balanceCoef`, 0.01 for the 2B model, 0.001 for 16B),
 * device-level loss (α2 `deviceBalanceCoef`, V2: 0.05), optional sequence scope (`balanceScope`).
 */
import {
  Config,
  defineEntry,
  editRouterLogits,
  type ForwardContext,
  Module,
  MoelabError,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  Type,
  tf,
} from '@moelab/core';
import { Balancer, type BalanceOptions, balanceFields, deviceBalanceLoss } from './balance.js';
import { checkK, gatherAt, planFromChoices, renormPerToken, topkRows } from './common.js';

export interface DeepSeekMoEOptions extends BalanceOptions {
  k: number;
  renormalize: boolean;
  devices: number;
  deviceLimit: number;
  deviceBalanceCoef: number;
}

/** Keep only experts of the `limit` best groups (by the group's max score) of each row: others -> -Infinity. */
export function limitGroups(v: Float32Array, T: number, E: number, groups: number, limit: number, groupScore: 'max' | 'top2-sum' = 'max'): Float32Array {
  const out = Float32Array.from(v);
  const per = E / groups;
  const score = new Float32Array(groups);
  for (let t = 0; t < T; t++) {
    for (let g = 0; g < groups; g++) {
      let a = Number.NEGATIVE_INFINITY;
      let b = Number.NEGATIVE_INFINITY;
      for (let j = 0; j < per; j++) {
        const x = v[t * E + g * per + j]!;
        if (x > a) {
          b = a;
          a = x;
        } else if (x > b) b = x;
      }
      score[g] = groupScore === 'max' || per < 2 ? a : a + b;
    }
    const keep = topkRows(score, 1, groups, limit);
    const kept = new Uint8Array(groups);
    for (const g of keep) if (g >= 0) kept[g] = 1;
    for (let g = 0; g < groups; g++) if (!kept[g]) for (let j = 0; j < per; j++) out[t * E + g * per + j] = Number.NEGATIVE_INFINITY;
  }
  return out;
}

export class DeepSeekMoERouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: DeepSeekMoEOptions,
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
    const { k, devices, deviceLimit } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    const logits = editRouterLogits(ctx, this.path, tf.matMul(x, this.weight, false, true) as tf.Tensor2D);
    const probs = tf.softmax(logits) as tf.Tensor2D;
    let sel = probs.dataSync() as Float32Array;
    if (devices > 1 && deviceLimit > 0 && deviceLimit < devices) sel = limitGroups(sel, T, E, devices, deviceLimit);
    const { plan, flat } = planFromChoices(topkRows(sel, T, E, k), T, k, E);
    let weight = gatherAt(probs, flat);
    if (this.options.renormalize) weight = renormPerToken(weight, plan);
    this.balancer.push(ctx, this.path, probs, plan, k, info, logits);
    if (ctx.training && devices > 1 && this.options.deviceBalanceCoef > 0) {
      ctx.aux.push({
        name: 'device_balance',
        layer: this.path,
        value: deviceBalanceLoss(probs, plan.counts, k, devices),
        coef: this.options.deviceBalanceCoef,
      });
    }
    return { plan, weight, probs, logits };
  }

  override afterStep(): void {
    this.balancer.resetGlobal();
  }
}

export const deepseekMoE = defineEntry({
  kind: 'router',
  name: 'deepseek-moe',
  description:
    "DeepSeekMoE / V2 gate: softmax over fine-grained routed experts, raw top-k weights, expert- and device-level balance losses, device-limited routing (shared experts: the moe layer's `shared`).",
  reference: 'docs/routers.md#deepseek-moe; arXiv 2401.06066, 2405.04434',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: Type.Integer({ minimum: 1, default: 6, description: "routed experts per token K' (16B: 6 of 64)" }),
    renormalize: Type.Boolean({ default: false, description: 'renormalise the selected weights (DeepSeekMoE / V2: false)' }),
    ...balanceFields(0.01),
    devices: Type.Integer({ minimum: 1, default: 1, description: 'D expert groups ("devices") for the device-level loss and device-limited routing' }),
    deviceLimit: Type.Integer({ minimum: 0, default: 0, description: 'M: only experts of the M best devices per token (V2: 3); 0 = off' }),
    deviceBalanceCoef: Type.Number({ minimum: 0, default: 0, description: 'α2 of the device-level loss (V2: 0.05)' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    if (E % c.devices !== 0) throw new MoelabError(`${E} experts cannot be split into ${c.devices} equal devices`, `${ctx.path}.devices`);
    if (c.deviceLimit > 0 && (c.deviceLimit * E) / c.devices < c.k) {
      throw new MoelabError(`deviceLimit ${c.deviceLimit} leaves ${(c.deviceLimit * E) / c.devices} experts, fewer than k = ${c.k}`, `${ctx.path}.deviceLimit`);
    }
    return new DeepSeekMoERouter(ctx.need('dModel'), E, c, ctx.rng);
  },
});
