/**
 * RMoE, the layerwise recurrent router (Qiu et al. 2024, arXiv 2408.06793), docs/routers.md#rmoe. One GRU cell (hidden r)
 * is shared by every RMoE router of a model; each layer l has its own input projection W1_l [r, d] and
 * output W2_l [E, r]:
 *
 *   h_l = GRU(W1_l x_l, h_{l−1})      h_0 = 0; per token, carried across layers (not positions), not detached
 *   z_l = W2_l h_l,   p = softmax(z_l),   S = top-k(p),   g_e = p_e / Σ_{j∈S} p_j      (Mixtral-style)
 *
 *   GRU(x, h):  r = σ(W_ir x + b_ir + W_hr h + b_hr),  u = σ(W_iz x + b_iz + W_hz h + b_hz)
 *               n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),   h' = (1 − u) ⊙ n + u ⊙ h
 *   plain RNN (`cell: 'rnn'`):  h' = tanh(W_in x + b_in + W_hn h + b_hn)
 *
 * Aux: Switch balance loss in the HF (×k) form, coefficient 0.001 (the official config default). Parameter
 * names follow the official code (`weight1`, `weight2`; the cell's `weight_ir` … `bias_hn`, registered as
 * `rnn` under the first router that uses it; later layers reference the same variables).
 *
 * Cross-layer state: the cell is one object per build and per `group` (`BuildContext.shared`), and the
 * hidden state travels in the forward context (`ctx.carry`, key `rmoe:<group>`), which the language
 * model resets at the start of every forward pass. Each call reads the state the previous RMoE call of
 * the pass left (layer order; shared blocks of layer grouping chain once per repeat) and overwrites it.
 * Causal-safe and batch-independent: the state is per token.
 */
import {
  type CarryKey,
  Config,
  carryKey,
  defineEntry,
  type ForwardContext,
  Module,
  MoelabError,
  type RouteInfo,
  type RouteResult,
  type Router,
  type Rng,
  readCarry,
  Type,
  tf,
  writeCarry,
} from '@moelab/core';
import { Balancer } from './balance.js';
import { checkK, gatherAt, kSchema, planFromChoices, renormPerToken, topkRows } from './common.js';

export type RecurrentCellType = 'gru' | 'rnn';

/** The recurrent cell shared by the RMoE routers of one model (input and hidden size r). */
export class RecurrentRouterCell extends Module {
  private readonly w = new Map<string, tf.Variable>();

  constructor(
    readonly hidden: number,
    readonly cell: RecurrentCellType,
    std: number,
    rng: Rng,
  ) {
    super();
    const gates = cell === 'gru' ? ['r', 'z', 'n'] : ['n'];
    for (const g of gates)
      for (const side of ['i', 'h']) {
        this.w.set(`weight_${side}${g}`, this.param(`weight_${side}${g}`, rng.normalArray(hidden * hidden, std), [hidden, hidden]));
        this.w.set(`bias_${side}${g}`, this.param(`bias_${side}${g}`, rng.normalArray(hidden, std), [hidden]));
      }
  }

  private lin(x: tf.Tensor2D, side: 'i' | 'h', gate: string): tf.Tensor2D {
    return tf.add(tf.matMul(x, this.w.get(`weight_${side}${gate}`)!, false, true), this.w.get(`bias_${side}${gate}`)!) as tf.Tensor2D;
  }

  /** One step: x [T, r], h [T, r] (null = zeros) -> h' [T, r]. */
  step(x: tf.Tensor2D, h: tf.Tensor2D | null): tf.Tensor2D {
    const h0 = h ?? (tf.zeros(x.shape) as tf.Tensor2D);
    if (this.cell === 'rnn') return tf.tanh(tf.add(this.lin(x, 'i', 'n'), this.lin(h0, 'h', 'n'))) as tf.Tensor2D;
    const r = tf.sigmoid(tf.add(this.lin(x, 'i', 'r'), this.lin(h0, 'h', 'r')));
    const u = tf.sigmoid(tf.add(this.lin(x, 'i', 'z'), this.lin(h0, 'h', 'z')));
    const n = tf.tanh(tf.add(this.lin(x, 'i', 'n'), tf.mul(r, this.lin(h0, 'h', 'n'))));
    return tf.add(tf.mul(tf.sub(1, u), n), tf.mul(u, h0)) as tf.Tensor2D;
  }
}

export interface RMoEOptions {
  k: number;
  hidden: number;
  cell: RecurrentCellType;
  group: string;
  renormalize: boolean;
  balanceCoef: number;
  zLossCoef: number;
  initStd: number;
}

/** What an RMoE router leaves in `ctx.carry` for the next layer. */
export interface RMoECarry {
  h: tf.Tensor2D;
  /** Path of the router that wrote it (for error messages). */
  layer: string;
}

export class RMoERouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly weight1: tf.Variable;
  readonly weight2: tf.Variable;
  readonly balancer: Balancer;

  constructor(
    readonly dModel: number,
    readonly numExperts: number,
    readonly cell: RecurrentRouterCell,
    readonly options: RMoEOptions,
    rng: Rng,
  ) {
    super();
    const { k, hidden, initStd } = options;
    if (k > numExperts) throw new MoelabError(`k = ${k} exceeds the number of experts (${numExperts})`);
    if (k === 1 && options.renormalize)
      throw new MoelabError('k = 1 with renormalize makes every gate 1: the router gets no task gradient (docs/routers.md#weighting-rules)');
    if (cell.hidden !== hidden) throw new MoelabError(`the shared recurrent cell of group '${options.group}' has hidden size ${cell.hidden}, not ${hidden}`);
    this.weight1 = this.param('weight1', rng.normalArray(hidden * dModel, initStd), [hidden, dModel]);
    this.weight2 = this.param('weight2', rng.normalArray(numExperts * hidden, initStd), [numExperts, hidden]);
    this.child('rnn', cell);
    this.balancer = new Balancer({
      balanceCoef: options.balanceCoef,
      zLossCoef: options.zLossCoef,
      balanceCounts: 'all',
      balanceScope: 'batch',
      balanceParity: 'hf',
    });
  }

  get expertsPerToken(): number {
    return this.options.k;
  }

  /** The `ctx.carry` slot of this router's group: every RMoE router of the group reads and overwrites it. */
  get carryKey(): CarryKey<RMoECarry> {
    return carryKey(`rmoe:${this.options.group}`);
  }

  /** h_l for x [T, d] given the carried state (also stores it for the next layer). */
  state(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const prev = readCarry(ctx, this.carryKey);
    if (prev && prev.h.shape[0] !== x.shape[0])
      throw new MoelabError(
        `the recurrent router state left by ${prev.layer || 'the previous layer'} has ${prev.h.shape[0]} tokens but this layer routes ${x.shape[0]}; RMoE layers of one forward pass must see the same tokens (or use different groups)`,
        this.path,
      );
    const h = this.cell.step(tf.matMul(x, this.weight1, false, true) as tf.Tensor2D, prev ? prev.h : null);
    writeCarry(ctx, this.carryKey, { h, layer: this.path });
    return h;
  }

  route(x: tf.Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const { k } = this.options;
    const T = x.shape[0];
    const E = this.numExperts;
    if (x.shape[1] !== this.dModel) throw new MoelabError(`router input has width ${x.shape[1]}, expected dModel = ${this.dModel}`, this.path);
    const h = this.state(x, ctx);
    const logits = tf.matMul(h, this.weight2, false, true) as tf.Tensor2D;
    const probs = tf.softmax(logits) as tf.Tensor2D;
    const choices = topkRows(probs.dataSync(), T, E, k);
    const { plan, flat } = planFromChoices(choices, T, k, E);
    let weight = gatherAt(probs, flat);
    if (this.options.renormalize) weight = renormPerToken(weight, plan);
    this.balancer.push(ctx, this.path, probs, plan, k, info, logits);
    return { plan, weight, probs, logits };
  }
}

export const rmoeRouter = defineEntry({
  kind: 'router',
  name: 'rmoe',
  description:
    'RMoE (Qiu et al. 2024): a GRU shared by all MoE layers carries a per-token router state across layers; logits = W2_l GRU(W1_l x, h_{l-1}); Mixtral-style top-k.',
  reference: 'docs/routers.md#rmoe; arXiv 2408.06793',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    k: kSchema(2),
    hidden: Type.Integer({ minimum: 1, default: 256, description: 'GRU hidden size r (moe_router_rnn_hidden_size; paper 256)' }),
    cell: Type.Union([Type.Literal('gru'), Type.Literal('rnn')], { default: 'gru', description: 'recurrent cell: GRU, or a plain tanh RNN' }),
    group: Type.String({
      minLength: 1,
      default: 'default',
      description: 'routers with the same group share one cell and one state chain (use distinct groups for independent chains)',
    }),
    renormalize: Type.Boolean({ default: true, description: 'renormalise the k selected probabilities (Mixtral; refused with k = 1)' }),
    balanceCoef: Type.Number({ minimum: 0, default: 0.001, description: 'Switch balance loss in the HF (×k) form (official config: 0.001)' }),
    zLossCoef: Type.Number({ minimum: 0, default: 0, description: 'router z-loss weight' }),
    initStd: Type.Number({ exclusiveMinimum: 0, default: 0.02, description: 'normal init std of W1, W2 and the cell (official init_method: 0.02)' }),
  }),
  create: (c, ctx) => {
    const E = ctx.need('numExperts');
    checkK(c.k, E, ctx.path);
    if (c.k === 1 && c.renormalize)
      throw new MoelabError(
        'k = 1 with renormalize: true makes every gate 1 and the router gets no task gradient; set renormalize: false',
        `${ctx.path}.renormalize`,
      );
    const cell = ctx.shared(`rmoe:${c.group}`, (rng) => new RecurrentRouterCell(c.hidden, c.cell, c.initStd, rng));
    if (cell.hidden !== c.hidden || cell.cell !== c.cell)
      throw new MoelabError(
        `every rmoe router of group '${c.group}' shares one cell: an earlier layer built a ${cell.cell} with hidden ${cell.hidden}, this one asks for a ${c.cell} with hidden ${c.hidden}`,
        `${ctx.path}.hidden`,
      );
    return new RMoERouter(ctx.need('dModel'), E, cell, c, ctx.rng);
  },
});
