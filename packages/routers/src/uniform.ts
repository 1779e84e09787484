/**
 * Parameter-free baseline routers (docs/routers.md#uniform; Megablocks
 * `uniform_expert_assignment`, Megatron `moe_router_force_load_balancing`), for benchmarks and as the
 * "no learned routing" control of a sweep.
 *
 *   random:      I_t = k distinct experts drawn uniformly (from the forward RNG),  g_t,e = 1/k
 *   round-robin: I_t = { (t·k + s) mod E : s < k },  g_t,e = 1/k  (deterministic, exactly balanced)
 */
import { Config, defineEntry, type ForwardContext, Module, type RouteResult, type Router, Type, tf } from '@moelab/core';
import { checkK, kSchema, planFromChoices } from './common.js';

export class UniformRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };

  constructor(
    readonly numExperts: number,
    readonly k: number,
    readonly mode: 'random' | 'round-robin',
  ) {
    super();
  }

  get expertsPerToken(): number {
    return this.k;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext): RouteResult {
    const T = x.shape[0];
    const { k, numExperts: E } = this;
    const choices = new Int32Array(T * k);
    for (let t = 0; t < T; t++) {
      if (this.mode === 'round-robin') {
        for (let s = 0; s < k; s++) choices[t * k + s] = (t * k + s) % E;
        continue;
      }
      const perm = Array.from({ length: E }, (_, e) => e);
      for (let s = 0; s < k; s++) {
        const j = s + ctx.rng.int(E - s);
        [perm[s], perm[j]] = [perm[j]!, perm[s]!];
        choices[t * k + s] = perm[s]!;
      }
    }
    const { plan } = planFromChoices(choices, T, k, E);
    return { plan, weight: k === 1 ? null : (tf.fill([plan.size], 1 / k) as tf.Tensor1D) };
  }
}

export const uniformRouter = defineEntry({
  kind: 'router',
  name: 'uniform',
  description: 'Parameter-free baseline: k random distinct experts per token (or round-robin), weight 1/k; perfectly balanced in expectation.',
  reference: 'docs/routers.md#uniform',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: kSchema(2),
    mode: Type.Union([Type.Literal('random'), Type.Literal('round-robin')], { default: 'random', description: 'random draws or a deterministic round-robin' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    return new UniformRouter(E, c.k, c.mode);
  },
});
