/**
 * One-shot expert pruning from calibration statistics (docs/compression.md#expert-pruning).
 * Per layer, every expert gets a score from the routing observer (lower = pruned first); the
 * n = round(ratio · E) lowest-scoring experts of every layer are removed by slicing (router rows and
 * experts; `sliceExperts`), the same count in every layer. Scores, over the tokens T_e routed to e:
 *
 *   reap                 (1/|T_e|) Σ_{t∈T_e} g_{t,e} ‖f_e(x_t)‖₂     REAP, arXiv 2510.13999
 *   frequency            |T_e|
 *   weighted-frequency   Σ_{t∈T_e} g_{t,e}
 *   ean                  Σ_{t∈T_e} ‖f_e(x_t)‖₂                        (EAN, summed)
 *   ean-mean             (1/|T_e|) Σ_{t∈T_e} ‖f_e(x_t)‖₂
 *   weighted-ean         Σ_{t∈T_e} g_{t,e} ‖f_e(x_t)‖₂  (= REAP · |T_e|)
 *   max-activation       max_{t∈T_e} ‖f_e(x_t)‖_∞
 *   easy-ep              Σ_{t∈T_e} g_{t,e} ‖f_e(x_t)‖₂ · (1 − cos(h_t, h_t + r_t))   EASY-EP, arXiv 2504.06792
 *                        (h_t: the residual stream the layer output is added to; r_t = Σ_{e∈S_t} g_{t,e} f_e(x_t):
 *                        tokens whose representation the routed experts turn more count more)
 *   random               a seeded random permutation (the control)
 *
 * `preserveSuper`: super experts (see `superExperts`) get +∞ and are never pruned.
 * Ties prune the higher expert id first (the ranking is deterministic).
 *
 * Mixed-domain calibration (EASY-EP's variant for one model serving several domains; official code
 * RUCAIBox/EASYEP): one observer per domain d, each domain's score normalised to sum 1 over the layer's
 * experts, then summed, so every domain weighs the same whatever its token count or activation scale:
 *
 *   score[e] = Σ_d s_d[e] / Σ_{e'} s_d[e']
 */
import { MoelabError, type Registry, Rng } from '@moelab/core';
import type { LayerStats, RoutingObserver } from './observer.js';
import { moeLayers, type SpecModel, sliceExperts } from './surgery.js';

export const PRUNE_SCORES = ['reap', 'frequency', 'weighted-frequency', 'ean', 'ean-mean', 'weighted-ean', 'max-activation', 'easy-ep', 'random'] as const;
export type PruneScore = (typeof PRUNE_SCORES)[number];

/** The per-expert score of one layer (higher = more important). */
export function expertScores(s: LayerStats, method: PruneScore, seed = 0): Float64Array {
  switch (method) {
    case 'reap':
      return s.reap();
    case 'frequency':
      return s.count.slice();
    case 'weighted-frequency':
      return s.gateSum.slice();
    case 'ean':
      return s.outNormSum.slice();
    case 'ean-mean':
      return s.eanMean();
    case 'weighted-ean':
      return s.reapSum.slice();
    case 'max-activation':
      return s.maxAbsOut.slice();
    case 'easy-ep':
      if (s.easyTokens === 0)
        throw new MoelabError('the easy-ep score needs the residual stream around the layer, which no transformer block reported during calibration', s.layer);
      return s.easySum.slice();
    case 'random': {
      const rng = Rng.derive(seed, 'prune-random', s.layer);
      return Float64Array.from({ length: s.numExperts }, () => rng.next());
    }
  }
  throw new MoelabError(`unknown pruning score "${method}"; one of ${PRUNE_SCORES.join(', ')}`, '--method');
}

/**
 * The mixed-domain score of one layer (see the file comment): Σ_d s_d / Σ s_d over the observers. One
 * observer gives its own score (the normalisation does not change a ranking).
 */
export function mixedDomainScores(observers: readonly RoutingObserver[], path: string, method: PruneScore, seed = 0): Float64Array {
  if (observers.length === 0) throw new MoelabError('mixed-domain pruning needs at least one calibration domain', '--calib');
  if (observers.length === 1 || method === 'random') return expertScores(observers[0]!.layer(path), method, seed);
  let out: Float64Array | undefined;
  observers.forEach((o, d) => {
    const s = expertScores(o.layer(path), method, seed);
    const total = s.reduce((a, v) => a + v, 0);
    if (!(total > 0)) throw new MoelabError(`calibration domain ${d + 1} gives every expert of this layer a zero ${method} score`, path);
    out ??= new Float64Array(s.length);
    if (s.length !== out.length) throw new MoelabError(`the calibration domains disagree on the expert count (${out.length} vs ${s.length})`, path);
    for (let e = 0; e < s.length; e++) out[e]! += s[e]! / total;
  });
  return out!;
}

/** Layers whose score needs the expert outputs (everything but frequency / random). */
const NEEDS_DETAIL: ReadonlySet<PruneScore> = new Set(['reap', 'weighted-frequency', 'ean', 'ean-mean', 'weighted-ean', 'max-activation', 'easy-ep']);

export interface SuperExpertOptions {
  /** Percentile of all (layer, expert) maxima the maximum must exceed (default 99.5). */
  percentile?: number;
  /** The maximum must also exceed max_all / ratio (default 10). */
  ratio?: number;
  /** Only the first fraction of the MoE layers is considered (default 0.75). */
  includeLayers?: number;
}

/**
 * Super experts (arXiv 2507.23279): experts whose largest output activation exceeds both the given
 * percentile of every (layer, expert) maximum and max_all / ratio, in the first `includeLayers` of the
 * MoE layers. Returns layer path → expert ids.
 */
export function superExperts(observer: RoutingObserver, layerOrder: string[], o: SuperExpertOptions = {}): Map<string, number[]> {
  const pct = o.percentile ?? 99.5;
  const ratio = o.ratio ?? 10;
  const include = Math.max(1, Math.floor((o.includeLayers ?? 0.75) * layerOrder.length));
  const all: number[] = [];
  for (const path of layerOrder) for (const v of observer.layer(path).maxAbsOut) all.push(v);
  const sorted = all.slice().sort((a, b) => a - b);
  const max = sorted.at(-1) ?? 0;
  // Linear interpolation between order statistics (numpy's default percentile).
  const pos = (pct / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const threshold = sorted.length ? sorted[lo]! + (sorted[Math.min(lo + 1, sorted.length - 1)]! - sorted[lo]!) * (pos - lo) : 0;
  const out = new Map<string, number[]>();
  layerOrder.forEach((path, i) => {
    if (i >= include) return;
    const ids = Array.from(observer.layer(path).maxAbsOut).flatMap((v, e) => (v > threshold && v > max / ratio ? [e] : []));
    if (ids.length) out.set(path, ids);
  });
  return out;
}

export interface PruneOptions {
  method: PruneScore;
  /** Fraction of each layer's experts to remove, in (0, 1). */
  ratio: number;
  seed?: number;
  /** Never prune super experts (their score becomes +∞). */
  preserveSuper?: boolean;
  /** Only these layers (default: every MoE layer). */
  layers?: string[];
}

export interface PrunePlan {
  /** Layer path → kept expert ids (sorted). */
  keep: Map<string, number[]>;
  /** Layer path → the score of every expert (before +∞ for super experts). */
  scores: Map<string, Float64Array>;
  /** Layer path → super experts protected. */
  protected: Map<string, number[]>;
}

/**
 * Which experts each layer keeps. Several observers (one per calibration domain) combine by the
 * mixed-domain rule of the file comment.
 */
export function planPruning(observer: RoutingObserver | readonly RoutingObserver[], source: SpecModel, o: PruneOptions): PrunePlan {
  const observers: readonly RoutingObserver[] = Array.isArray(observer) ? observer : [observer as RoutingObserver];
  if (observers.length === 0) throw new MoelabError('pruning needs at least one calibration domain', '--calib');
  if (!PRUNE_SCORES.includes(o.method)) throw new MoelabError(`unknown pruning method "${o.method}"; one of ${PRUNE_SCORES.join(', ')}`, '--method');
  if (!(o.ratio > 0 && o.ratio < 1)) throw new MoelabError(`the pruning ratio must be in (0, 1), got ${o.ratio}`, '--ratio');
  const layers = moeLayers(source.model);
  if (layers.length === 0) throw new MoelabError('the model has no moe layer with routed experts to prune');
  const chosen = o.layers ? layers.filter((l) => o.layers!.includes(l.path)) : layers;
  for (const p of o.layers ?? [])
    if (!layers.some((l) => l.path === p)) throw new MoelabError(`no moe layer "${p}"; moe layers: ${layers.map((l) => l.path).join(', ')}`, '--layers');
  const guard = new Map<string, number[]>();
  if (o.preserveSuper)
    for (const obs of observers)
      for (const [path, ids] of superExperts(
        obs,
        layers.map((l) => l.path),
      ))
        guard.set(
          path,
          [...new Set([...(guard.get(path) ?? []), ...ids])].sort((a, b) => a - b),
        );
  const keep = new Map<string, number[]>();
  const scores = new Map<string, Float64Array>();
  for (const l of chosen) {
    for (const obs of observers) {
      const s = obs.layer(l.path);
      if (s.tokens === 0) throw new MoelabError('the calibration pass saw no tokens in this layer', l.path);
      if (NEEDS_DETAIL.has(o.method) && !s.detailed)
        throw new MoelabError(
          `the ${o.method} score needs per-token expert outputs, which this layer's router does not report (use frequency or random)`,
          l.path,
        );
    }
    const E = l.numExperts;
    const score = mixedDomainScores(observers, l.path, o.method, o.seed ?? 0);
    scores.set(l.path, score);
    const ranked = Array.from(score, (v, e) => ({ v: guard.get(l.path)?.includes(e) ? Number.POSITIVE_INFINITY : v, e })).sort(
      (a, b) => b.v - a.v || a.e - b.e,
    );
    const n = Math.round(o.ratio * E);
    if (n < 1) throw new MoelabError(`ratio ${o.ratio} of ${E} experts prunes none; use a ratio of at least ${(0.5 / E).toFixed(3)}`, '--ratio');
    keep.set(
      l.path,
      ranked
        .slice(0, E - n)
        .map((r) => r.e)
        .sort((a, b) => a - b),
    );
  }
  return { keep, scores, protected: guard };
}

/** Plan and apply: the pruned model and its spec (plus the plan). */
export function pruneExperts(
  registry: Registry,
  observer: RoutingObserver | readonly RoutingObserver[],
  source: SpecModel,
  o: PruneOptions,
  seed = 0,
): SpecModel & { plan: PrunePlan } {
  const plan = planPruning(observer, source, o);
  return { ...sliceExperts(registry, source, plan.keep, seed), plan };
}
