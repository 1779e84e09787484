/**
 * sigma-MoE (Csordás, Irie, Schmidhuber 2023; the feed-forward of MoEUT): E two-layer ReLU experts of
 * `size` units, selected by sigmoid gates (the `sigma-topk` router) and summed unnormalised:
 *
 *   y = Σ_{e ∈ top-k(l)} σ(l_e) · act(x keys[e]) values[e]       keys [E, d, es], values [E, es, d]
 *
 * Two entries:
 *   - `expert: sigma-moe`: the expert bank alone (parameters `keys`, `values`), usable in the generic
 *     `ffn: moe` shell (names there: `router.expert_sel`, `experts.keys`, `experts.values`).
 *   - `ffn: sigma-moe`: the whole layer as MoEUT's `SigmaMoE` module, a `sigma-topk` router plus this bank,
 *     with the official flat state_dict names `expert_sel`, `keys`, `values` (so `transformer.layers.{i}.ffn.keys`
 *     etc. in a MoEUT model). In a peri-LN block the router reads ln2(x) and the experts the raw x.
 *
 * The expert computation goes through core's `moeMLP` op (a backend's fused kernel when registered).
 * Init (docs/moeut.md#initialisation): keys ~ N(0, (s/√d)²), values ~ N(0, (s/√(E·es))²), s = `initScale`, by default
 * √(2/L) with L the unrolled depth of the model (1 outside a model).
 */
import {
  ACTIVATIONS,
  type Activation,
  Config,
  type DispatchPlan,
  defineEntry,
  type ExpertBank,
  type ForwardContext,
  MoELayer,
  Module,
  MoelabError,
  moeMLP,
  type Rng,
  type Router,
  Type,
  type tf,
} from '@moelab/core';

export interface SigmaMoEExpertOptions {
  size: number;
  activation: Activation;
  initScale: number;
}

export class SigmaMoEExperts extends Module implements ExpertBank {
  readonly keys: tf.Variable;
  readonly values: tf.Variable;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly options: SigmaMoEExpertOptions,
    rng: Rng,
  ) {
    super();
    const { size, initScale } = options;
    const E = numExperts;
    this.keys = this.param('keys', rng.normalArray(E * dModel * size, initScale / Math.sqrt(dModel)), [E, dModel, size]);
    this.values = this.param('values', rng.normalArray(E * size * dModel, initScale / Math.sqrt(E * size)), [E, size, dModel]);
  }

  apply(x: tf.Tensor2D, plan: DispatchPlan, weight: tf.Tensor1D | null, _ctx: ForwardContext): tf.Tensor2D {
    return moeMLP(x, this.keys as tf.Tensor3D, this.values as tf.Tensor3D, plan, weight, this.options.activation);
  }

  parametersPerExpert(): number {
    return 2 * this.dModel * this.options.size;
  }
}

/**
 * The MoEUT `SigmaMoE` layer: the generic MoE shell (dispatch, capacity, expert masks, routing statistics)
 * whose router and expert parameters are registered flat on the layer itself, so the state_dict names are
 * the official ones (`expert_sel`, `keys`, `values`) instead of `router.*` / `experts.*`.
 */
export class SigmaMoELayer extends MoELayer {
  constructor(router: Router, experts: ExpertBank, capacityFactor: number) {
    super(router, experts, { capacityFactor });
    this.children.delete('router');
    this.children.delete('experts');
    for (const m of [router, experts]) {
      for (const [name, v] of m.namedParameters()) {
        if (this.params.has(name)) throw new MoelabError(`sigma-moe: router and experts both have a parameter "${name}"`);
        this.params.set(name, v);
      }
      for (const [name, v] of m.namedBuffers()) this.buffers.set(name, v);
    }
  }

  override assignPaths(prefix = '', seen = new Set<Module>()): void {
    super.assignPaths(prefix, seen);
    this.router.path = this.path;
    this.experts.path = this.path;
  }

  override finalizeForward(ctx: ForwardContext): void {
    this.router.finalizeForward?.(ctx);
    this.experts.finalizeForward?.(ctx);
  }
}

const activation = Type.Union(
  ACTIVATIONS.map((a) => Type.Literal(a)),
  { default: 'relu', description: 'expert activation (sigma-MoE / MoEUT: relu)' },
);

function defaultInitScale(env: Record<string, unknown>): number {
  const L = env.nLayers as number | undefined;
  return L ? Math.sqrt(2 / L) : 1;
}

export const sigmaMoEExperts = defineEntry({
  kind: 'expert',
  name: 'sigma-moe',
  description: 'sigma-MoE experts: keys [E,d,es], values [E,es,d], ReLU (MoEUT init); use with the sigma-topk router.',
  reference: 'docs/moeut.md#sigma-moe-feed-forward; arXiv 2310.10837',
  schema: Config({
    size: Type.Integer({ minimum: 1, default: 128, description: 'units per expert (es; 128 in every MoEUT profile)' }),
    activation,
    initScale: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'init std scale; default √(2 / layers)' })),
  }),
  create: (c, ctx) =>
    new SigmaMoEExperts(
      ctx.need('dModel'),
      ctx.need('numExperts'),
      { size: c.size, activation: c.activation, initScale: c.initScale ?? defaultInitScale(ctx.env) },
      ctx.rng,
    ),
});

export const sigmaMoEFFN = defineEntry({
  kind: 'ffn',
  name: 'sigma-moe',
  description: 'MoEUT sigma-MoE feed-forward (sigma-topk router + sigma-moe experts) with the official names expert_sel / keys / values.',
  reference: 'docs/moeut.md#sigma-moe-feed-forward, docs/moeut.md#parameter-names; arXiv 2310.10837, 2405.16039',
  schema: Config({
    experts: Type.Integer({ minimum: 1, default: 64, description: 'number of experts E' }),
    k: Type.Integer({ minimum: 1, default: 4, description: 'experts per token K' }),
    expertSize: Type.Integer({ minimum: 1, default: 128, description: 'units per expert es' }),
    activation,
    expertDropout: Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0 }),
    balance: Type.Union([Type.Literal('sequence'), Type.Literal('global'), Type.Literal('none')], {
      default: 'sequence',
      description: 'entropy regulariser: per sequence over time x repeats (MoEUT), all tokens (sigma-MoE paper), none',
    }),
    balanceCoef: Type.Number({ minimum: 0, default: 0.01, description: 'regulariser weight (MoEUT γ = 0.01)' }),
    capacityFactor: Type.Number({ minimum: 0, default: 0, description: '0 = dropless (as in sigma-MoE)' }),
    initScale: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'init std scale; default √(2 / layers)' })),
  }),
  create: (c, ctx) => {
    if (c.k > c.experts) throw new MoelabError(`k = ${c.k} exceeds the number of experts (${c.experts})`, `${ctx.path}.k`);
    const env = { numExperts: c.experts };
    const scale = c.initScale ?? defaultInitScale(ctx.env);
    const router = ctx.build<Router>(
      'router',
      { type: 'sigma-topk', k: c.k, expertDropout: c.expertDropout, balance: c.balance, balanceCoef: c.balanceCoef, initScale: scale },
      'router',
      env,
    );
    const experts = ctx.build<ExpertBank>('expert', { type: 'sigma-moe', size: c.expertSize, activation: c.activation, initScale: scale }, 'expert', env);
    return new SigmaMoELayer(router, experts, c.capacityFactor);
  },
});
