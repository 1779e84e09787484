/**
 * SteerMoE (Fayyaz et al. 2025, arXiv 2509.09660; official code adobe-research/SteerMoE),
 * docs/compression.md#steering-steermoe: find the experts linked to a behaviour from two contrasting
 * text sets A (toward) and B (away), then force or block them at inference.
 *
 * Detection, per layer ℓ and expert e, from the observer's per-domain counts:
 *   A1 = #A-tokens with e ∈ TopK / #A-tokens,   A2 = the same on B,   Δ_{ℓ,e} = A1 − A2
 * (positive: the expert fires more on A). All (ℓ, e) pairs are ranked by Δ: the `activate` largest
 * positive ones are forced, the `deactivate` most negative ones blocked, at most k forced per layer
 * (SteerMoE skips the rest).
 * Intervention: `logitOverride` per layer (forced → max z + 0.01, blocked → min z − 0.01 before the
 * softmax / top-k), through `ForwardContext.routerLogitEdits`.
 */
import { MoelabError, type RouterLogitEdit } from '@moelab/core';
import type { RoutingObserver } from './observer.js';
import { logitOverride } from './surgery.js';

export const STEER_FORMAT = 'moelab-steer-v1';

/** The saved steering: per MoE layer path, the experts to force and to block. */
export interface SteerFile {
  format: typeof STEER_FORMAT;
  toward: string;
  away: string;
  layers: Record<string, { force: number[]; block: number[] }>;
}

export interface SteerScore {
  layer: string;
  expert: number;
  /** Activation rate on A minus on B. */
  delta: number;
  rateToward: number;
  rateAway: number;
}

/** Δ for every (layer, expert) of the observed layers, from the per-domain counts under `toward` / `away`. */
export function steerScores(observer: RoutingObserver, toward: string, away: string): SteerScore[] {
  const out: SteerScore[] = [];
  for (const s of observer.layers.values()) {
    const nA = s.domainTokens.get(toward) ?? 0;
    const nB = s.domainTokens.get(away) ?? 0;
    if (nA === 0) throw new MoelabError(`no calibration tokens were observed under "${toward}"`, '--toward');
    if (nB === 0) throw new MoelabError(`no calibration tokens were observed under "${away}"`, '--away');
    const a = s.domainCounts.get(toward)!;
    const b = s.domainCounts.get(away)!;
    for (let e = 0; e < s.numExperts; e++) {
      const rateToward = a[e]! / nA;
      const rateAway = b[e]! / nB;
      out.push({ layer: s.layer, expert: e, delta: rateToward - rateAway, rateToward, rateAway });
    }
  }
  return out;
}

export interface SteerOptions {
  /** Experts (over all layers) to force: the largest positive Δ. */
  activate: number;
  /** Experts (over all layers) to block: the most negative Δ. */
  deactivate: number;
  /** Experts per token of each layer (caps the forced experts per layer). */
  topK: Map<string, number>;
}

/** Choose the experts to force and block. */
export function planSteering(scores: SteerScore[], toward: string, away: string, o: SteerOptions): SteerFile {
  if (!(Number.isInteger(o.activate) && o.activate >= 0)) throw new MoelabError(`--activate must be a non-negative integer, got ${o.activate}`, '--activate');
  if (!(Number.isInteger(o.deactivate) && o.deactivate >= 0))
    throw new MoelabError(`--deactivate must be a non-negative integer, got ${o.deactivate}`, '--deactivate');
  if (o.activate + o.deactivate === 0) throw new MoelabError('nothing to steer: give --activate or --deactivate a positive count');
  const layers: SteerFile['layers'] = {};
  const entry = (l: string) => {
    layers[l] ??= { force: [], block: [] };
    return layers[l]!;
  };
  const byDelta = scores.slice().sort((x, y) => y.delta - x.delta || x.layer.localeCompare(y.layer) || x.expert - y.expert);
  let forced = 0;
  for (const s of byDelta) {
    if (forced >= o.activate || s.delta <= 0) break;
    const l = entry(s.layer);
    if (l.force.length >= (o.topK.get(s.layer) ?? Number.POSITIVE_INFINITY)) continue;
    l.force.push(s.expert);
    forced++;
  }
  let blocked = 0;
  for (const s of byDelta.slice().reverse()) {
    if (blocked >= o.deactivate || s.delta >= 0) break;
    const l = entry(s.layer);
    const E = scores.filter((x) => x.layer === s.layer).length;
    // Keep at least k experts selectable.
    if (E - (l.block.length + 1) < (o.topK.get(s.layer) ?? 1)) continue;
    l.block.push(s.expert);
    blocked++;
  }
  for (const l of Object.values(layers)) {
    l.force.sort((a, b) => a - b);
    l.block.sort((a, b) => a - b);
  }
  return { format: STEER_FORMAT, toward, away, layers };
}

/** The router-logit edits of a steer file, for `ForwardContext.routerLogitEdits`. */
export function steerEdits(file: Pick<SteerFile, 'layers'>): Map<string, RouterLogitEdit> {
  return new Map(Object.entries(file.layers).map(([path, l]) => [path, logitOverride(l.force, l.block)]));
}

/** Parse and check a steer file's JSON text. */
export function parseSteerFile(text: string, where: string): SteerFile {
  let f: SteerFile;
  try {
    f = JSON.parse(text);
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, where);
  }
  if (f?.format !== STEER_FORMAT)
    throw new MoelabError(`unknown steering format ${JSON.stringify(f?.format)} (expected "${STEER_FORMAT}")`, `${where}: $.format`);
  if (!f.layers || typeof f.layers !== 'object')
    throw new MoelabError('the file has no "layers" object (layer path -> { force, block })', `${where}: $.layers`);
  for (const [k, v] of Object.entries(f.layers))
    for (const key of ['force', 'block'] as const)
      if (!Array.isArray(v?.[key]) || !v[key].every((x) => Number.isInteger(x)))
        throw new MoelabError(`expected an array of integer expert ids`, `${where}: $.layers["${k}"].${key}`);
  return f;
}
