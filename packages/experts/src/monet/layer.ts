/**
 * A MONET layer (router + HD or VD expert shards in one `ffn` node) and its two registry entries,
 * `monet-hd` and `monet-vd`.
 *
 * Aux losses: L_unif and L_amb are pushed as `monet_unif` / `monet_amb` with coefficient λ (default 1e-3)
 * by every routing layer.
 *
 * Expert masking (docs/monet.md#expert-masking): `ctx.expertMask.get(layerPath)` holds expert ids i·E + j; the layer then evaluates
 * from G' = (Σ_h g1 ⊗ g2) ⊙ M, so a removed expert's weights and biases vanish (no renormalisation).
 */
import {
  ACTIVATIONS,
  type Activation,
  Config,
  carryKey,
  defineEntry,
  type FeedForward,
  type ForwardContext,
  Module,
  MoelabError,
  type Rng,
  type RoutingStats,
  readCarry,
  Type,
  tf,
  writeCarry,
} from '@moelab/core';
import { MonetHDExperts } from './hd.js';
import { monetAmbiguityLoss, monetExpertScores, monetUniformityLoss } from './losses.js';
import { MonetRouter, type MonetRouting } from './router.js';
import { MonetVDExperts } from './vd.js';

export interface MonetOptions {
  decomposition: 'horizontal' | 'vertical';
  /** Experts per group E (= √N). */
  experts: number;
  /** Hidden width m of one composed expert. */
  expertDim: number;
  heads: number;
  k: number;
  /** Router-sharing period G: layers with layerIndex % G == 0 own a router. */
  routerGroup: number;
  activation: Activation;
  unifCoef: number;
  ambCoef: number;
  initStd: number;
  bnEps: number;
  bnMomentum: number;
}

/** The routing of the most recent routing layer in a forward pass, for the layers that share it. */
const sharedRouting = carryKey<MonetRouting>('monet:routing');

/** A MONET layer: router (if it owns one) + HD or VD experts; output before the residual add. */
export class MonetLayer extends Module implements FeedForward {
  readonly router?: MonetRouter;
  readonly moe: MonetHDExperts | MonetVDExperts;

  constructor(
    readonly dModel: number,
    readonly options: MonetOptions,
    ownsRouter: boolean,
    rng: Rng,
  ) {
    super();
    const { experts: E, expertDim: m, heads: H, k } = options;
    if (k > E) throw new MoelabError(`k = ${k} exceeds the experts per group (${E})`);
    if (ownsRouter)
      this.router = this.child(
        'router',
        new MonetRouter(dModel, { heads: H, experts: E, k, eps: options.bnEps, momentum: options.bnMomentum, initStd: options.initStd }, rng),
      );
    const Experts = options.decomposition === 'horizontal' ? MonetHDExperts : MonetVDExperts;
    this.moe = this.child('moe', new Experts(dModel, E, m, options.activation, rng, options.initStd));
  }

  /** Composed experts per layer N = E². */
  get numExperts(): number {
    return this.options.experts * this.options.experts;
  }

  /** Expert parameters per layer: 2·E·m·d + E·m + E·d (docs/monet.md#costs), plus 2·H·E·d on routing layers. */
  static parameterCount(d: number, E: number, m: number, H: number, ownsRouter: boolean): number {
    return 2 * E * m * d + E * m + E * d + (ownsRouter ? 2 * H * E * d : 0);
  }

  forward(x: tf.Tensor, ctx: ForwardContext, sources: { routerInput?: tf.Tensor; tokenMask?: Uint8Array } = {}): tf.Tensor {
    const shape = x.shape;
    const d = shape[shape.length - 1]!;
    const flat = tf.reshape(x, [-1, d]) as tf.Tensor2D;
    const n = flat.shape[0];
    let routing: MonetRouting | undefined;
    if (this.router) {
      const rin = sources.routerInput ? (tf.reshape(sources.routerInput, [-1, sources.routerInput.shape.at(-1)!]) as tf.Tensor2D) : flat;
      routing = this.router.route(rin, ctx.training, sources.tokenMask);
      writeCarry(ctx, sharedRouting, routing);
      const { g: g1 } = routing.group1;
      const { g: g2 } = routing.group2;
      ctx.aux.push({ name: 'monet_unif', layer: this.path, value: monetUniformityLoss(g1, g2), coef: this.options.unifCoef });
      ctx.aux.push({ name: 'monet_amb', layer: this.path, value: monetAmbiguityLoss(g1, g2), coef: this.options.ambCoef });
    } else {
      routing = readCarry(ctx, sharedRouting);
      if (!routing)
        throw new MoelabError(
          `this monet layer shares its router (routerGroup ${this.options.routerGroup}) but no earlier layer of this forward pass routed`,
          this.path || undefined,
        );
      if (routing.n !== n) throw new MoelabError(`the shared routing covers ${routing.n} tokens, this monet layer got ${n}`, this.path || undefined);
    }
    const g1 = routing.group1.g;
    const g2 = routing.group2.g;
    const masked = ctx.expertMask?.get(this.path);
    let out: tf.Tensor2D;
    if (masked && masked.size > 0) {
      const E = this.options.experts;
      const keep = new Float32Array(E * E).fill(1);
      for (const id of masked) {
        if (!Number.isInteger(id) || id < 0 || id >= E * E)
          throw new MoelabError(`expert mask id ${id} is out of range [0, ${E * E}) for this monet layer`, this.path);
        keep[id] = 0;
      }
      out = this.moe.forwardScores(flat, tf.mul(monetExpertScores(g1, g2), tf.tensor2d(keep, [E, E])) as tf.Tensor3D);
    } else {
      out = this.moe.forward(flat, g1, g2);
    }
    this.record(ctx, routing, masked);
    return tf.reshape(out, shape);
  }

  /** Routing statistics: expert (i, j) is used by token t when some head selected i in group 1 and j in group 2. */
  private record(ctx: ForwardContext, routing: MonetRouting, masked?: Set<number>): void {
    const { experts: E, heads: H } = this.options;
    const N = E * E;
    const n = routing.n;
    const s1 = routing.group1.sel;
    const s2 = routing.group2.sel;
    const counts = new Array<number>(N).fill(0);
    const mark = new Uint8Array(N);
    const tok: number[] = [];
    const ex: number[] = [];
    let min = Number.POSITIVE_INFINITY;
    let max = 0;
    for (let t = 0; t < n; t++) {
      const used: number[] = [];
      for (let h = 0; h < H; h++) {
        const o = (t * H + h) * E;
        for (let i = 0; i < E; i++) {
          if (!s1[o + i]) continue;
          for (let j = 0; j < E; j++) {
            if (!s2[o + j]) continue;
            const id = i * E + j;
            if (mark[id] || masked?.has(id)) continue;
            mark[id] = 1;
            used.push(id);
          }
        }
      }
      used.sort((a, b) => a - b);
      for (const id of used) {
        mark[id] = 0;
        counts[id]!++;
        tok.push(t);
        ex.push(id);
      }
      min = Math.min(min, used.length);
      max = Math.max(max, used.length);
    }
    const total = tok.length || 1;
    const stats: RoutingStats = {
      layer: this.path,
      numExperts: N,
      tokens: n,
      counts,
      load: counts.map((c) => c / total),
      dropRate: 0,
      expertsPerToken: n > 0 ? tok.length / n : 0,
      expertsPerTokenMin: n > 0 ? min : 0,
      expertsPerTokenMax: max,
      extra: { sigma: this.router?.sigma ?? Number.NaN },
    };
    if (ctx.stats !== false) ctx.routing.push(stats);
    if (ctx.assignments) {
      const list = ctx.assignments.get(this.path) ?? [];
      list.push({ tokenIndex: Int32Array.from(tok), expertIndex: Int32Array.from(ex), tokens: n });
      ctx.assignments.set(this.path, list);
    }
  }
}

const monetSchema = Config({
  experts: Type.Integer({ minimum: 1, default: 16, description: 'experts per group E (= √N; N = E² composed experts per layer)' }),
  expertDim: Type.Integer({ minimum: 1, default: 8, description: 'hidden width m of one composed expert (even for monet-vd)' }),
  heads: Type.Integer({ minimum: 1, default: 4, description: 'routing heads H' }),
  k: Type.Integer({ minimum: 1, default: 2, description: 'target experts per head and group: σ = Φ⁻¹(1 − k/E)' }),
  routerGroup: Type.Integer({
    minimum: 1,
    default: 1,
    description: 'router-sharing period G: layers with index % G == 0 own a router, the next G−1 reuse its routing',
  }),
  activation: Type.Union(
    ACTIVATIONS.map((a) => Type.Literal(a)),
    { default: 'relu2', description: 'expert activation (MONET: squared ReLU)' },
  ),
  unifCoef: Type.Number({ minimum: 0, default: 1e-3, description: 'λ of the uniformity loss L_unif' }),
  ambCoef: Type.Number({ minimum: 0, default: 1e-3, description: 'λ of the ambiguity loss L_amb' }),
  initStd: Type.Number({ exclusiveMinimum: 0, default: 0.02, description: 'std of every Linear weight (HF init); biases start at 0' }),
  bnEps: Type.Number({ exclusiveMinimum: 0, default: 1e-5 }),
  bnMomentum: Type.Number({ minimum: 0, maximum: 1, default: 0.1 }),
});

function monetEntry(decomposition: 'horizontal' | 'vertical') {
  const short = decomposition === 'horizontal' ? 'hd' : 'vd';
  return defineEntry({
    kind: 'ffn',
    name: `monet-${short}`,
    description:
      decomposition === 'horizontal'
        ? 'MONET-HD: E² experts composed from E bottom and E top shards, BatchNorm-threshold routing (router + experts in one layer).'
        : 'MONET-VD: E² experts composed from left/right hidden halves and top/bottom output halves, BatchNorm-threshold routing.',
    reference: `docs/monet.md#${decomposition === 'horizontal' ? 'horizontal' : 'vertical'}-decomposition; arXiv 2412.04139`,
    schema: monetSchema,
    create: (c, ctx) => {
      const d = ctx.need('dModel');
      if (c.k > c.experts) throw new MoelabError(`k = ${c.k} exceeds the experts per group (${c.experts})`, `${ctx.path}.k`);
      if (decomposition === 'vertical' && (d % 2 || c.expertDim % 2))
        throw new MoelabError(`monet-vd needs an even dModel and an even expertDim (got dModel ${d}, expertDim ${c.expertDim})`, ctx.path);
      const layerIndex = typeof ctx.env.layerIndex === 'number' ? ctx.env.layerIndex : 0;
      return new MonetLayer(d, { ...c, decomposition }, layerIndex % c.routerGroup === 0, ctx.rng);
    },
  });
}

export const monetHD = monetEntry('horizontal');
export const monetVD = monetEntry('vertical');
