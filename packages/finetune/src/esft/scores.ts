/**
 * ESFT relevance scores (arXiv 2407.01906 §3.2; official code github.com/deepseek-ai/ESFT): how much a
 * task's tokens use each routed expert of each MoE layer, measured with the frozen base model on a
 * sample of the task's training text.
 *
 *   average gate score       g_i = (1/N) Σ_t g_{i,t}
 *   token selection ratio    r_i = (1/N) Σ_t 1[g_{i,t} > 0] / K_t
 *
 * over the N routing decisions of the layer (one per token and call; a layer shared by several repeats
 * counts each call). g_{i,t} is the router's softmax affinity of expert i for token t when i is among
 * the token's experts and 0 otherwise (the routing distribution before any top-k renormalisation; the
 * combine weight for routers without one), and K_t the number of experts the router picked for t (k for
 * top-k routers). Every window has the same length, so the per-sequence average of the paper equals this
 * per-token average. Σ_i r_i = 1 exactly and Σ_i g_i ≤ 1 (the mean top-k probability mass).
 *
 * docs/finetune.md#esft.
 */
import { forwardContext, type LanguageModel, type Module, MoELayer, MoelabError, Rng, type RouteResult, type Router, tf } from '@moelab/core';
import { type EsftExpertConfig, type EsftScoreKind, type EsftScoresFile, esftExpertConfig } from './select.js';

/** An MoE layer ESFT can work on, with the key it has in score and config files. */
export interface EsftLayer {
  /** The transformer layer index ("3" for `transformer.layers.3.ffn`), else the module path. */
  key: string;
  path: string;
  layer: MoELayer;
}

/** The key of an MoE layer in ESFT files: its transformer layer index, as in the released files. */
export function esftLayerKey(path: string): string {
  const m = /(?:^|\.)layers\.(\d+)\.ffn$/.exec(path);
  return m ? m[1]! : path;
}

/**
 * Every MoE layer of `model` whose experts ESFT can select, in model order. A model without one (a dense
 * model, or only token-mixing routers) is an error naming `where`.
 */
export function esftLayers(model: Module, where = 'model'): EsftLayer[] {
  const moe = model.modules().filter((m): m is MoELayer => m instanceof MoELayer);
  if (moe.length === 0)
    throw new MoelabError(
      'ESFT fine-tunes the routed experts of an MoE model, but this model has no moe layer (a dense model: use lora or full fine-tuning)',
      where,
    );
  const out: EsftLayer[] = [];
  for (const layer of moe) {
    if (layer.router.mix)
      throw new MoelabError(
        `ESFT needs a router that assigns tokens to experts; ${layer.router.constructor.name} mixes tokens or expert parameters instead`,
        `${where}: ${layer.path}.router`,
      );
    out.push({ key: esftLayerKey(layer.path), path: layer.path, layer });
  }
  const keys = new Set<string>();
  for (const l of out) {
    if (keys.has(l.key)) throw new MoelabError(`two moe layers share the ESFT key "${l.key}"`, `${where}: ${l.path}`);
    keys.add(l.key);
  }
  return out;
}

/** Running sums of one layer. */
export interface EsftLayerTally {
  key: string;
  path: string;
  numExperts: number;
  /** Routing decisions seen (tokens × calls). */
  decisions: number;
  /** Σ_t 1[i ∈ S_t] / K_t per expert. */
  tokenSum: Float64Array;
  /** Σ_t g_{i,t} per expert. */
  gateSum: Float64Array;
}

/** Add one router call's decisions to a tally. */
export function tallyRouting(tally: EsftLayerTally, routed: RouteResult): void {
  const { plan } = routed;
  const T = plan.numTokens;
  const E = tally.numExperts;
  const perToken = new Int32Array(T);
  for (let n = 0; n < plan.size; n++) perToken[plan.tokenIndex[n]!]!++;
  const probs = routed.probs ? routed.probs.dataSync() : null;
  const weight = !probs && routed.weight ? routed.weight.dataSync() : null;
  for (let n = 0; n < plan.size; n++) {
    const t = plan.tokenIndex[n]!;
    const e = plan.expertIndex[n]!;
    tally.tokenSum[e]! += 1 / perToken[t]!;
    tally.gateSum[e]! += probs ? probs[t * E + e]! : weight ? weight[n]! : 1;
  }
  tally.decisions += T;
}

/**
 * Runs `body` with every listed layer's router observed: each route call of the layers adds its decisions
 * to the layer's tally. The routers are restored afterwards, whatever happens.
 */
export function observeRouting<T>(layers: EsftLayer[], body: (tallies: EsftLayerTally[]) => T): T {
  const tallies = layers.map(
    (l): EsftLayerTally => ({
      key: l.key,
      path: l.path,
      numExperts: l.layer.router.numExperts,
      decisions: 0,
      tokenSum: new Float64Array(l.layer.router.numExperts),
      gateSum: new Float64Array(l.layer.router.numExperts),
    }),
  );
  const restore: (() => void)[] = [];
  try {
    layers.forEach((l, i) => {
      const router: Router = l.layer.router;
      const own = Object.hasOwn(router, 'route');
      const original = router.route;
      router.route = function (this: Router, ...args: Parameters<Router['route']>) {
        const routed = original.apply(this, args);
        tallyRouting(tallies[i]!, routed);
        return routed;
      };
      restore.push(() => {
        if (own) router.route = original;
        else delete (router as Partial<Router>).route;
      });
    });
    return body(tallies);
  } finally {
    for (const r of restore) r();
  }
}

/** Scores of one layer from its tally: r_i and g_i. */
export function layerScores(t: EsftLayerTally): { token: Float64Array; gate: Float64Array } {
  const N = Math.max(1, t.decisions);
  return { token: t.tokenSum.map((v) => v / N), gate: t.gateSum.map((v) => v / N) };
}

/** The released scores format: `{ token_scores: {layer: {expert: r}}, gate_scores: {layer: {expert: g}} }`. */
export function esftScoresFile(tallies: EsftLayerTally[]): EsftScoresFile {
  const file: EsftScoresFile = { token_scores: {}, gate_scores: {} };
  for (const t of tallies) {
    const { token, gate } = layerScores(t);
    file.token_scores[t.key] = Object.fromEntries(Array.from(token, (v, e) => [String(e), v]));
    file.gate_scores[t.key] = Object.fromEntries(Array.from(gate, (v, e) => [String(e), v]));
  }
  return file;
}

/**
 * The ESFT scores of `model` on token windows: every batch ([B, T] ids, row-major) runs one forward pass
 * in inference mode with the MoE layers' routers observed. Returns the tallies (for the totals) and the
 * scores document.
 */
export function esftScores(
  model: Module & LanguageModel,
  batches: Iterable<{ ids: Int32Array; batchSize: number; seqLen: number }>,
  o: { seed?: number; where?: string } = {},
): { file: EsftScoresFile; tallies: EsftLayerTally[] } {
  const layers = esftLayers(model, o.where);
  const tallies = observeRouting(layers, (tallies) => {
    let i = 0;
    for (const b of batches) {
      if (b.ids.length !== b.batchSize * b.seqLen) throw new MoelabError(`a batch holds ${b.ids.length} ids, not ${b.batchSize} × ${b.seqLen}`, o.where);
      tf.tidy(() => {
        const ids = tf.tensor2d(b.ids, [b.batchSize, b.seqLen], 'int32');
        model.forward(ids, forwardContext(Rng.derive(o.seed ?? 0, 'esft-scores', i++), false, { stats: false }));
      });
    }
    return tallies;
  });
  if (tallies.every((t) => t.decisions === 0)) throw new MoelabError('no tokens were scored (the data gave no batch)', o.where);
  return { file: esftScoresFile(tallies), tallies };
}

/**
 * Score `model` on `batches` and select its experts (eq. 8): what `moelab finetune --method esft` does when
 * the adapter has no `experts`. Returns the scores document and the expert config.
 */
export function esftSelect(
  model: Module & LanguageModel,
  batches: Iterable<{ ids: Int32Array; batchSize: number; seqLen: number }>,
  o: { score?: EsftScoreKind; p?: number; sharedExperts?: boolean; seed?: number; where?: string } = {},
): { scores: EsftScoresFile; config: EsftExpertConfig } {
  const { file } = esftScores(model, batches, o);
  return { scores: file, config: esftExpertConfig(file, o) };
}
