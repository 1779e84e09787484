/**
 * Load-balance metrics of routing statistics (specs/routers.md §7).
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

export function balanceOf(counts: ArrayLike<number>): { cv: number; maxVio: number; deadFraction: number } {
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
  return { cv: mean > 0 ? std / mean : 0, maxVio: mean > 0 ? (max - mean) / mean : 0, deadFraction: dead / Math.max(1, n) };
}

/** Merge the statistics of several calls of the same layer (e.g. micro-batches, repeats). */
export function mergeRouting(stats: RoutingStats[]): Map<string, RoutingStats> {
  const by = new Map<string, RoutingStats>();
  for (const s of stats) {
    const m = by.get(s.layer);
    if (!m) {
      by.set(s.layer, { ...s, counts: s.counts.slice(), load: s.load.slice() });
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
    m.expertsPerToken = (m.expertsPerToken * m.tokens + s.expertsPerToken * s.tokens) / (m.tokens + s.tokens);
    m.tokens += s.tokens;
  }
  return by;
}

export function summarizeLayer(s: RoutingStats): BalanceSummary {
  return { ...balanceOf(s.counts), dropRate: s.dropRate, entropy: s.entropy };
}
