/**
 * Chain-of-Experts (Wang et al. 2025, arXiv 2506.18945), docs/routers.md#chain-of-experts: an `ffn` wrapper that runs the SAME expert
 * bank C times, each iteration with its own router (any token-choice router of the registry):
 *
 *   x⁽⁰⁾ = x;   x⁽ᵗ⁾ = Σ_{e∈I_t} g_t,e E_e(x⁽ᵗ⁻¹⁾) + x⁽ᵗ⁻¹⁾      (inner residual), t = 1..C
 *   returns x⁽ᶜ⁾ − x   (the increment: the block's outer residual adds x back)
 *   or x⁽ᶜ⁾ with `returnIncrement: false` (the literal form, which doubles the residual).
 *
 * Compute-matched with a k-expert MoE when each iteration's router uses k/C experts. Routers are built
 * from the one `router` node (iteration i > 0 gets its own initialisation), experts are shared across
 * iterations, each iteration is a `moe` layer (capacity options apply per iteration) and reports its
 * own routing statistics (`<path>.iterations.<i>`).
 */
import {
  Config,
  defineEntry,
  type ExpertBank,
  type FeedForward,
  type ForwardContext,
  Module,
  ModuleList,
  MoELayer,
  MoelabError,
  Node,
  type Router,
  Type,
  tf,
} from '@moelab/core';

export class ChainOfExperts extends Module implements FeedForward {
  readonly iterations: MoELayer[];

  constructor(
    routers: Router[],
    readonly experts: ExpertBank,
    readonly returnIncrement: boolean,
    capacityFactor: number,
  ) {
    super();
    // The bank is registered first so its parameters are named `experts.*` (first reference wins).
    this.child('experts', experts);
    this.iterations = routers.map((r) => new MoELayer(r, experts, { capacityFactor }));
    this.child('iterations', new ModuleList(this.iterations));
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: { routerInput?: tf.Tensor } = {}): tf.Tensor {
    let h = x;
    this.iterations.forEach((layer, i) => {
      // The first iteration may route on a normalised input (peri-norm); later ones route on x⁽ᵗ⁻¹⁾.
      h = tf.add(h, layer.forward(h, ctx, i === 0 ? sources : {}));
    });
    return this.returnIncrement ? tf.sub(h, x) : h;
  }

  override activeParameterCount(seen = new Set<Module>()): number {
    if (seen.has(this)) return 0;
    seen.add(this);
    let n = 0;
    for (const it of this.iterations) n += it.activeParameterCount(new Set([this.experts]));
    return n;
  }

  override macsPerToken(): number {
    let n = 0;
    for (const it of this.iterations) n += it.macsPerToken(0);
    return n;
  }
}

export const chainOfExperts = defineEntry({
  kind: 'ffn',
  name: 'chain-of-experts',
  description: 'Chain-of-Experts (Wang et al. 2025): C sequential passes through one shared expert bank, a router per pass, inner residuals.',
  reference: 'docs/routers.md#chain-of-experts; arXiv 2506.18945',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 8, description: 'number of experts E (shared by every iteration)' }),
    iterations: Type.Integer({ minimum: 1, default: 2, description: 'C sequential iterations' }),
    router: Node('router', { default: { type: 'softmax-topk', k: 2 } }),
    expert: Node('expert', { default: 'mlp' }),
    returnIncrement: Type.Boolean({ default: true, description: 'return x⁽ᶜ⁾ − x so the outer residual is not doubled' }),
    capacityFactor: Type.Number({ minimum: 0, default: 0, description: 'per-iteration capacity factor; 0 = dropless' }),
  }),
  create: (c, ctx) => {
    const routers: Router[] = [];
    for (let i = 0; i < c.iterations; i++) routers.push(ctx.build<Router>('router', c.router, i === 0 ? 'router' : `router#${i}`, { numExperts: c.experts }));
    const r0 = routers[0]!;
    if (ctx.env.causal && r0.flags.batchDependent) {
      throw new MoelabError(
        "this router is batch-dependent (a token's routing depends on other tokens of the batch), which a causal language model cannot use; use a causal-safe router",
        `${ctx.path}.router`,
      );
    }
    if (r0.mix) throw new MoelabError('chain-of-experts needs a token-choice router (this one mixes tokens or parameters)', `${ctx.path}.router`);
    const experts = ctx.build<ExpertBank>('expert', c.expert, 'expert', { numExperts: c.experts });
    return new ChainOfExperts(routers, experts, c.returnIncrement, c.capacityFactor);
  },
});
