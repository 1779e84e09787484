/**
 * Load-balance metrics of routing statistics (docs/metrics.md).
 */
import type { RoutingStats } from './module.js';

export interface BalanceSummary {
  /** Coefficient of variation of per-expert load (0 = perfectly balanced). */
  cv: number;
  /** MaxVio (Wang et al. 2024): (max load - mean load) / mean load. */
  maxVio: number;
  /** Fraction of experts that received no token. */
  deadFraction: number;
  dropRate: number;
  entropy?: number;
}

export function balanceOf(counts: ArrayLike<number>): {
  cv: number;
  maxVio: number;
  deadFraction: number;
  maxOverMean: number;
  deadExperts: number;
  loadEntropy: number;
} {
  const n = counts.length;
  let sum = 0;
  let max = 0;
  let dead = 0;
  for (let i = 0; i < n; i++) {
    sum += counts[i]!;
    max = Math.max(max, counts[i]!);
    if (counts[i] === 0) dead++;
  }
  const mean = sum / Math.max(1, n);
  let v = 0;
  for (let i = 0; i < n; i++) v += (counts[i]! - mean) ** 2;
  const std = Math.sqrt(v / Math.max(1, n));
  let h = 0;
  for (let i = 0; i < n; i++) {
    const q = sum > 0 ? counts[i]! / sum : 0;
    if (q > 0) h -= q * Math.log(q);
  }
  return {
    cv: mean > 0 ? std / mean : 0,
    maxVio: mean > 0 ? (max - mean) / mean : 0,
    deadFraction: dead / Math.max(1, n),
    maxOverMean: mean > 0 ? max / mean : 0,
    deadExperts: dead,
    // H(c / A) / log E: 1 = perfectly balanced counts
    loadEntropy: n > 1 ? h / Math.log(n) : 1,
  };
}

/** Merge the statistics of several calls of the same layer (e.g. micro-batches, repeats). */
export function mergeRouting(stats: RoutingStats[]): Map<string, RoutingStats> {
  const by = new Map<string, RoutingStats>();
  for (const s of stats) {
    const m = by.get(s.layer);
    if (!m) {
      by.set(s.layer, { ...s, counts: s.counts.slice(), load: s.load.slice(), intendedCounts: s.intendedCounts?.slice() });
      continue;
    }
    const assignedM = m.counts.reduce((a, b) => a + b, 0) / Math.max(1e-9, 1 - m.dropRate);
    const assignedS = s.counts.reduce((a, b) => a + b, 0) / Math.max(1e-9, 1 - s.dropRate);
    for (let e = 0; e < m.counts.length; e++) m.counts[e]! += s.counts[e]!;
    const total = m.counts.reduce((a, b) => a + b, 0) || 1;
    m.load = m.counts.map((c) => c / total);
    const assigned = assignedM + assignedS;
    m.dropRate = assigned > 0 ? 1 - total / assigned : 0;
    if (m.entropy !== undefined && s.entropy !== undefined) m.entropy = (m.entropy * m.tokens + s.entropy * s.tokens) / (m.tokens + s.tokens);
    const avg = (a: number | undefined, b: number | undefined) =>
      a !== undefined && b !== undefined ? (a * m.tokens + b * s.tokens) / (m.tokens + s.tokens) : undefined;
    if (m.intendedCounts && s.intendedCounts) m.intendedCounts = m.intendedCounts.map((c, e) => c + s.intendedCounts![e]!);
    m.tokenDropRate = avg(m.tokenDropRate, s.tokenDropRate);
    m.marginalEntropy = avg(m.marginalEntropy, s.marginalEntropy);
    m.zLoss = avg(m.zLoss, s.zLoss);
    m.saturation = avg(m.saturation, s.saturation);
    if (m.expertsPerTokenMin !== undefined && s.expertsPerTokenMin !== undefined) m.expertsPerTokenMin = Math.min(m.expertsPerTokenMin, s.expertsPerTokenMin);
    if (m.expertsPerTokenMax !== undefined && s.expertsPerTokenMax !== undefined) m.expertsPerTokenMax = Math.max(m.expertsPerTokenMax, s.expertsPerTokenMax);
    m.expertsPerToken = (m.expertsPerToken * m.tokens + s.expertsPerToken * s.tokens) / (m.tokens + s.tokens);
    m.tokens += s.tokens;
  }
  return by;
}

export function summarizeLayer(s: RoutingStats): BalanceSummary {
  return { ...balanceOf(s.counts), dropRate: s.dropRate, entropy: s.entropy };
}

/**
 * Every metric of docs/metrics.md for one layer's (merged) statistics, as a flat record of numbers
 * and per-expert arrays, for metrics.jsonl and `moelab inspect`. Counts are intended assignments (before
 * capacity) where the layer reported them, kept assignments otherwise; `keptLoadFraction` is after drops.
 * Entropies are normalised by log E (1 = uniform).
 */
export interface RoutingMetrics {
  layer: string;
  loadFraction: number[];
  keptLoadFraction: number[];
  tokensPerExpert: number[];
  cv: number;
  maxVio: number;
  maxOverMean: number;
  deadExperts: number;
  dropRate: number;
  tokenDropRate?: number;
  expertsPerToken: number;
  expertsPerTokenMin?: number;
  expertsPerTokenMax?: number;
  routingEntropy?: number;
  marginalEntropy?: number;
  loadEntropy: number;
  zLoss?: number;
  saturation?: number;
  extra?: Record<string, number>;
}

export function routingMetrics(s: RoutingStats): RoutingMetrics {
  const intended = s.intendedCounts ?? s.counts;
  const total = intended.reduce((a, b) => a + b, 0) || 1;
  const b = balanceOf(intended);
  const logE = s.numExperts > 1 ? Math.log(s.numExperts) : 1;
  return {
    layer: s.layer,
    loadFraction: intended.map((c) => c / total),
    keptLoadFraction: s.load,
    tokensPerExpert: intended.slice(),
    cv: b.cv,
    maxVio: b.maxVio,
    maxOverMean: b.maxOverMean,
    deadExperts: b.deadExperts,
    dropRate: s.dropRate,
    tokenDropRate: s.tokenDropRate,
    expertsPerToken: s.expertsPerToken,
    expertsPerTokenMin: s.expertsPerTokenMin,
    expertsPerTokenMax: s.expertsPerTokenMax,
    routingEntropy: s.entropy !== undefined ? s.entropy / logE : undefined,
    marginalEntropy: s.marginalEntropy !== undefined ? s.marginalEntropy / logE : undefined,
    loadEntropy: b.loadEntropy,
    zLoss: s.zLoss,
    saturation: s.saturation,
    extra: s.extra,
  };
}
