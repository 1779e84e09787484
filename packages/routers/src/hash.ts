/**
 * Hash layers, Roller et al. 2021 (arXiv 2106.04426; docs/routers.md#hash): the expert is a fixed function of the token id,
 * not of the hidden state. No parameters, no aux loss, weight 1, one expert per token.
 *
 *   e_t = h(id_t)         random: a fixed random table V -> E (seeded per layer: seed + layerIndex)
 *                         balanced: tokens in descending corpus frequency, each to the lightest bucket
 *                         bigram: a hash of (id_{t-1}, id_t) within the sequence (id_t alone at t = 0)
 *                         previous-token: table[id_{t-1}] (table[id_t] at t = 0)
 *                         position: a random table over positions
 *
 * The token ids come from the forward context (`ctx.tokenIds`, set by the language model, row-major like
 * the rows the layer sees). ParlAI's reference uses one table (`random.seed(42)`) for every layer:
 * `sameTableAllLayers: true` reproduces that. Causal-safe and batch-independent.
 */
import {
  Config,
  defineEntry,
  type ForwardContext,
  hashString,
  Module,
  MoelabError,
  type RouteInfo,
  type RouteResult,
  type Router,
  Rng,
  Type,
} from '@moelab/core';
import { planFromChoices, sequenceLayout } from './common.js';

export type HashKind = 'random' | 'balanced' | 'bigram' | 'previous-token' | 'position';

export interface HashOptions {
  hash: HashKind;
  vocabSize: number;
  seed: number;
  /** Token id -> corpus count, required by the balanced hash. */
  frequencies?: number[];
}

/** Greedy balanced assignment: tokens by descending frequency, each to the currently lightest bucket. */
export function balancedTable(freq: ArrayLike<number>, E: number): Int32Array {
  const V = freq.length;
  const order = Array.from({ length: V }, (_, v) => v).sort((a, b) => freq[b]! - freq[a]! || a - b);
  const mass = new Float64Array(E);
  const table = new Int32Array(V);
  for (const v of order) {
    let best = 0;
    for (let e = 1; e < E; e++) if (mass[e]! < mass[best]!) best = e;
    table[v] = best;
    mass[best]! += freq[v]!;
  }
  return table;
}

export class HashRouter extends Module implements Router {
  readonly flags = { causalSafe: true, batchDependent: false };
  readonly table: Int32Array;

  constructor(
    readonly numExperts: number,
    readonly options: HashOptions,
  ) {
    super();
    const { vocabSize: V } = options;
    if (options.hash === 'balanced') {
      if (!options.frequencies) throw new MoelabError('the balanced hash needs token frequencies (an array of vocabSize counts)');
      if (options.frequencies.length !== V) throw new MoelabError(`frequencies has ${options.frequencies.length} entries, expected vocabSize = ${V}`);
      this.table = balancedTable(options.frequencies, numExperts);
    } else {
      const rng = new Rng(options.seed);
      this.table = Int32Array.from({ length: V }, () => rng.int(numExperts));
    }
  }

  get expertsPerToken(): number {
    return 1;
  }

  /** A cached decoding step sees only the new tokens: the hashes of the previous token or of the position need earlier rows. */
  override cachedDecodingBlocker(): string | null {
    const h = this.options.hash;
    return h === 'bigram' || h === 'previous-token' || h === 'position'
      ? `the ${h} hash reads the ${h === 'position' ? "token's position" : 'previous token'} from the rows of the call, which a cached step does not pass`
      : null;
  }

  expertOf(id: number, prev: number | undefined, position: number): number {
    const E = this.numExperts;
    switch (this.options.hash) {
      case 'bigram':
        return prev === undefined ? this.table[id]! : hashString(`${this.options.seed}/${prev}/${id}`) % E;
      case 'previous-token':
        return this.table[prev ?? id]!;
      case 'position':
        return hashString(`${this.options.seed}/pos/${position}`) % E;
      default:
        return this.table[id]!;
    }
  }

  route(x: import('@moelab/core').Tensor2D, ctx: ForwardContext, info?: RouteInfo): RouteResult {
    const N = x.shape[0];
    const ids = ctx.tokenIds;
    if (!ids || ids.length !== N) {
      throw new MoelabError(
        `the hash router needs the token ids of the forward pass (ctx.tokenIds with ${N} entries; got ${ids ? ids.length : 'none'}); use it inside a language model`,
        this.path || undefined,
      );
    }
    const { T } = sequenceLayout(N, info?.batchShape);
    const choices = new Int32Array(N);
    for (let n = 0; n < N; n++) {
      const pos = n % T;
      const id = ids[n]!;
      if (id < 0 || id >= this.options.vocabSize)
        throw new MoelabError(`token id ${id} is outside the hash table (vocabSize ${this.options.vocabSize})`, this.path || undefined);
      choices[n] = this.expertOf(id, pos > 0 ? ids[n - 1] : undefined, pos);
    }
    return { plan: planFromChoices(choices, N, 1, this.numExperts).plan, weight: null };
  }
}

export const hashRouter = defineEntry({
  kind: 'router',
  name: 'hash',
  description: 'Hash layers (Roller et al. 2021): expert = fixed hash of the token id (random, balanced, bigram, previous-token, position); no parameters.',
  reference: 'docs/routers.md#hash; arXiv 2106.04426',
  flags: { causalSafe: true, batchDependent: false },
  schema: Config({
    hash: Type.Union(
      (['random', 'balanced', 'bigram', 'previous-token', 'position'] as const).map((h) => Type.Literal(h)),
      { default: 'random', description: 'hash family' },
    ),
    seed: Type.Integer({ default: 42, description: 'table seed (ParlAI: 42); layer index is added unless sameTableAllLayers' }),
    sameTableAllLayers: Type.Boolean({ default: false, description: 'one table for every layer (ParlAI reference behaviour)' }),
    vocabSize: Type.Optional(Type.Integer({ minimum: 1, description: "table size (default: the model's vocabSize)" })),
    frequencies: Type.Optional(Type.Array(Type.Number({ minimum: 0 }), { description: 'corpus count of each token id (balanced hash)' })),
  }),
  create: (c, ctx) => {
    const V = c.vocabSize ?? (ctx.env.vocabSize as number | undefined);
    if (V === undefined) throw new MoelabError('the hash router needs vocabSize (from the model or its own option)', `${ctx.path}.vocabSize`);
    if (c.hash === 'balanced' && !c.frequencies)
      throw new MoelabError('the balanced hash needs "frequencies" (corpus count of each token id)', `${ctx.path}.frequencies`);
    if (c.frequencies && c.frequencies.length !== V)
      throw new MoelabError(`has ${c.frequencies.length} entries, expected vocabSize = ${V}`, `${ctx.path}.frequencies`);
    const layer = (ctx.env.layerIndex as number | undefined) ?? 0;
    return new HashRouter(ctx.need('numExperts'), {
      hash: c.hash,
      vocabSize: V,
      seed: c.sameTableAllLayers ? c.seed : c.seed + layer,
      frequencies: c.frequencies,
    });
  },
});
