/**
 * Partitions of an FFN's h neurons into E equal groups (docs/upcycling.md#splitting-an-ffn):
 *
 *   contiguous:       neuron j -> group ⌊j / (h/E)⌋ (MoEfication's "random" split as coded)
 *   random:           a seeded random permutation cut into E blocks (LLaMA-MoE's Independent-Random)
 *   balanced-kmeans:  k-means on the L2-normalised neuron vectors (rows of W1 in [out, in] layout) whose
 *                     assignment step gives every cluster exactly h/E neurons (MoEfication's parameter
 *                     clustering, LLaMA-MoE's Independent-Clustering)
 *
 * The balanced assignment (every cluster exactly h/E members, least total distance) is the exact min-cost
 * assignment of the h neurons to h slots (each cluster repeated h/E times), solved by the Hungarian
 * algorithm (npm `munkres`) up to EXACT_ASSIGNMENT_LIMIT neurons, as the reference code's KMeansConstrained
 * and LAPJV do; above it a greedy pass — all (neuron, cluster) pairs by increasing distance, each taken when
 * the neuron is free and the cluster not full — keeps the cost at O(hE log hE).
 */
import { MoelabError, Rng } from '@moelab/core';
import { munkres } from 'munkres';
import type { WeightTensor } from './weights.js';

export type Partition = number[][];

/** Neurons up to which the balanced assignment is solved exactly (Hungarian, O(h³)); greedy above. */
export const EXACT_ASSIGNMENT_LIMIT = 2048;

/**
 * Assigns n items to E groups of exactly `size` = n/E members minimising Σ cost[j·E + c] (cost [n, E]
 * row-major). Exact (Hungarian on n × n slots) when n ≤ `exactLimit`, greedy otherwise. Returns the group of
 * each item.
 */
export function balancedAssignment(cost: Float64Array, n: number, E: number, exactLimit = EXACT_ASSIGNMENT_LIMIT): Int32Array {
  const size = n / E;
  const assign = new Int32Array(n).fill(-1);
  if (n <= exactLimit) {
    const m = Array.from({ length: n }, (_, j) => Array.from({ length: n }, (_, slot) => cost[j * E + Math.floor(slot / size)]!));
    for (const [j, slot] of munkres(m)) assign[j] = Math.floor(slot / size);
    return assign;
  }
  const pairs: [number, number, number][] = [];
  for (let j = 0; j < n; j++) for (let c = 0; c < E; c++) pairs.push([cost[j * E + c]!, j, c]);
  pairs.sort((x, y) => x[0] - y[0] || x[1] - y[1] || x[2] - y[2]);
  const fill = new Int32Array(E);
  for (const [, j, c] of pairs) {
    if (assign[j] !== -1 || fill[c]! >= size) continue;
    assign[j] = c;
    fill[c]!++;
  }
  return assign;
}

export function contiguousPartition(h: number, E: number): Partition {
  const s = h / E;
  return Array.from({ length: E }, (_, e) => Array.from({ length: s }, (_, j) => e * s + j));
}

export function randomPartition(h: number, E: number, seed: number, label: string): Partition {
  const rng = Rng.derive(seed, 'partition', label);
  const perm = Array.from({ length: h }, (_, j) => j);
  for (let j = h - 1; j > 0; j--) {
    const r = rng.int(j + 1);
    [perm[j], perm[r]] = [perm[r]!, perm[j]!];
  }
  const s = h / E;
  return Array.from({ length: E }, (_, e) => perm.slice(e * s, (e + 1) * s).sort((a, b) => a - b));
}

/** Rows of `w` [h, d] L2-normalised, as h vectors. */
export function normalisedRows(w: WeightTensor): Float64Array[] {
  const [h, d] = w.shape as [number, number];
  return Array.from({ length: h }, (_, j) => {
    const v = Float64Array.from(w.data.subarray(j * d, (j + 1) * d));
    const n = Math.hypot(...v) || 1;
    return v.map((x) => x / n);
  });
}

/** Balanced k-means of `points` into E clusters of exactly points.length / E members. */
export function balancedKMeans(points: Float64Array[], E: number, seed: number, label: string, maxIter = 20, exactLimit = EXACT_ASSIGNMENT_LIMIT): Partition {
  const h = points.length;
  const d = points[0]!.length;
  const size = h / E;
  const order = randomPartition(h, h, seed, `${label}/init`).map((g) => g[0]!);
  let centres = order.slice(0, E).map((j) => Float64Array.from(points[j]!));
  let assign: Int32Array = new Int32Array(h).fill(-1);
  for (let it = 0; it < maxIter; it++) {
    const cost = new Float64Array(h * E);
    for (let j = 0; j < h; j++)
      for (let c = 0; c < E; c++) {
        let s = 0;
        for (let a = 0; a < d; a++) s += (points[j]![a]! - centres[c]![a]!) ** 2;
        cost[j * E + c] = s;
      }
    const next = balancedAssignment(cost, h, E, exactLimit);
    const stable = next.every((c, j) => c === assign[j]);
    assign = next;
    centres = Array.from({ length: E }, () => new Float64Array(d));
    for (let j = 0; j < h; j++) for (let a = 0; a < d; a++) centres[assign[j]!]![a]! += points[j]![a]! / size;
    if (stable) break;
  }
  const groups: Partition = Array.from({ length: E }, () => []);
  for (let j = 0; j < h; j++) groups[assign[j]!]!.push(j);
  return groups;
}

/** Every neuron in exactly one group, all groups of size h/E; otherwise an error (a bug guard). */
export function checkPartition(p: Partition, h: number): void {
  const seen = new Uint8Array(h);
  for (const g of p)
    for (const j of g) {
      if (seen[j]) throw new MoelabError(`neuron ${j} is in two groups`);
      seen[j] = 1;
    }
  if (seen.some((s) => !s)) throw new MoelabError('a neuron is in no group');
  if (p.some((g) => g.length !== p[0]!.length)) throw new MoelabError('groups of unequal size');
}

/**
 * MoEfication's neuron co-activation graph from hidden activations `acts` [N, h] (row-major; ReLU outputs,
 * or |act(g)·u| for gated FFNs). Tokens are taken in batches of `batch` (8 in the reference):
 *
 *   A_ij = Σ_batches min(1, Σ_{t∈batch} a_ti·a_tj)
 *
 * then the smallest decile p ∈ {10, 20, …, 100} whose percentile of A is positive gives τ = 0.99·pct_p(A);
 * the graph keeps the edges i ≠ j with A_ij ≥ τ, weighted ⌊A_ij / τ⌋. Returned as a dense symmetric [h, h]
 * matrix of edge weights (0: no edge). Throws when no neuron pair is ever co-active.
 */
export function coactivationGraph(acts: Float32Array, N: number, h: number, batch = 8): Float64Array {
  const A = new Float64Array(h * h);
  const pair = new Float64Array(h * h);
  for (let t0 = 0; t0 < N; t0 += batch) {
    pair.fill(0);
    const t1 = Math.min(N, t0 + batch);
    for (let t = t0; t < t1; t++) {
      const row = acts.subarray(t * h, (t + 1) * h);
      for (let i = 0; i < h; i++) {
        const ai = row[i]!;
        if (ai === 0) continue;
        for (let j = 0; j < h; j++) pair[i * h + j]! += ai * row[j]!;
      }
    }
    for (let k = 0; k < h * h; k++) A[k]! += Math.min(1, pair[k]!);
  }
  const sorted = Float64Array.from(A).sort();
  let threshold = 0;
  for (let p = 10; p <= 100 && threshold === 0; p += 10) threshold = percentile(sorted, p);
  if (threshold === 0) throw new MoelabError('no two neurons are ever active together on the calibration tokens: the co-activation graph is empty');
  const tau = 0.99 * threshold;
  const W = new Float64Array(h * h);
  for (let i = 0; i < h; i++)
    for (let j = 0; j < h; j++) {
      const a = A[i * h + j]!;
      if (i !== j && a >= tau) W[i * h + j] = Math.floor(a / tau);
    }
  return W;
}

/** The p-th percentile of ascending `sorted` with linear interpolation (numpy's default). */
function percentile(sorted: Float64Array, p: number): number {
  const pos = ((sorted.length - 1) * p) / 100;
  const lo = Math.floor(pos);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/** Total weight of the edges between different groups of `p` (what a graph partition minimises). */
export function edgeCut(W: Float64Array, p: Partition): number {
  const h = Math.round(Math.sqrt(W.length));
  const part = new Int32Array(h);
  p.forEach((g, e) => {
    for (const j of g) part[j] = e;
  });
  let cut = 0;
  for (let i = 0; i < h; i++) for (let j = i + 1; j < h; j++) if (part[i] !== part[j]) cut += W[i * h + j]!;
  return cut;
}

/**
 * A balanced E-way partition of the weighted graph `W` [h, h] (symmetric) with a small edge cut, every part
 * exactly h/E vertices. METIS (what MoEfication calls) has no JavaScript port, so:
 *
 *   1. growth: the parts take turns; each starts from the free vertex of largest weighted degree and then
 *      takes the free vertex most strongly connected to it (ties: larger degree, then lower index);
 *   2. refinement: passes over all vertex pairs in different parts, swapping a pair whenever the swap lowers
 *      the cut (gain = c(u,Q) − c(u,P) + c(v,P) − c(v,Q) − 2w(u,v) > 0, with c(x,S) = Σ_{y∈S} w(x,y)),
 *      until a pass makes no swap or after `maxPasses`.
 *
 * Swaps keep the sizes exact, so no rebalancing step is needed (MoEfication moves random surplus neurons after
 * METIS's approximately balanced cut). Deterministic.
 */
export function balancedGraphPartition(W: Float64Array, h: number, E: number, maxPasses = 8): Partition {
  const size = h / E;
  const part = new Int32Array(h).fill(-1);
  const degree = new Float64Array(h);
  for (let i = 0; i < h; i++) for (let j = 0; j < h; j++) degree[i]! += W[i * h + j]!;
  // conn[x*E + e] = Σ_{y in part e} w(x, y)
  const conn = new Float64Array(h * E);
  const fill = new Int32Array(E);
  const place = (v: number, e: number) => {
    part[v] = e;
    fill[e]!++;
    for (let x = 0; x < h; x++) conn[x * E + e]! += W[x * h + v]!;
  };
  for (let placed = 0; placed < h; ) {
    for (let e = 0; e < E && placed < h; e++) {
      if (fill[e]! >= size) continue;
      let best = -1;
      for (let v = 0; v < h; v++) {
        if (part[v] !== -1) continue;
        if (best === -1 || conn[v * E + e]! > conn[best * E + e]! || (conn[v * E + e] === conn[best * E + e] && degree[v]! > degree[best]!)) best = v;
      }
      place(best, e);
      placed++;
    }
  }
  for (let pass = 0; pass < maxPasses; pass++) {
    let swaps = 0;
    for (let u = 0; u < h; u++)
      for (let v = u + 1; v < h; v++) {
        const P = part[u]!;
        const Q = part[v]!;
        if (P === Q) continue;
        const gain = conn[u * E + Q]! - conn[u * E + P]! + conn[v * E + P]! - conn[v * E + Q]! - 2 * W[u * h + v]!;
        if (gain <= 1e-12) continue;
        part[u] = Q;
        part[v] = P;
        for (let x = 0; x < h; x++) {
          const d = W[x * h + v]! - W[x * h + u]!;
          conn[x * E + P]! += d;
          conn[x * E + Q]! -= d;
        }
        swaps++;
      }
    if (swaps === 0) break;
  }
  const groups: Partition = Array.from({ length: E }, () => []);
  for (let j = 0; j < h; j++) groups[part[j]!]!.push(j);
  return groups;
}

/**
 * LLaMA-MoE's gradient-importance splits (arXiv 2406.16554 §2.2; pjlab-sys4nlp/llama-moe). `scores[e][j]` is
 * neuron j's importance on data cluster e, v_j = Σ_t |a_tj · ∂L/∂a_tj| (the loss change when the neuron is
 * removed, to first order). Each expert ranks the neurons by its own cluster's importance.
 *
 *   importance (neuron-independent): repeatedly give the globally best (expert, neuron) pair — every expert's
 *     most important free neuron, the largest of those wins, ties to the later expert as in the reference —
 *     until every expert has `size` neurons
 *   sharing-inner: expert e = its `size` most important neurons; a neuron may be in several experts or in none
 */
export function importancePartition(scores: Float64Array[], size: number): Partition {
  const E = scores.length;
  const h = scores[0]!.length;
  if (size * E !== h) throw new MoelabError(`${E} experts of ${size} neurons do not cover the ${h} neurons`);
  return greedyByImportance(scores, size, new Uint8Array(h));
}

function rankings(scores: Float64Array[]): number[][] {
  return scores.map((s) => Array.from({ length: s.length }, (_, j) => j).sort((i, j) => s[j]! - s[i]! || i - j));
}

function greedyByImportance(scores: Float64Array[], size: number, used: Uint8Array): Partition {
  const E = scores.length;
  const order = rankings(scores);
  const head = new Int32Array(E);
  const groups: Partition = Array.from({ length: E }, () => []);
  const free = used.length - used.reduce((s, u) => s + u, 0);
  for (let taken = 0; taken < Math.min(free, E * size); taken++) {
    let bestE = -1;
    for (let e = 0; e < E; e++) {
      if (groups[e]!.length >= size) continue;
      while (head[e]! < order[e]!.length && used[order[e]![head[e]!]!]) head[e]!++;
      if (head[e]! >= order[e]!.length) continue;
      if (bestE === -1 || scores[e]![order[e]![head[e]!]!]! >= scores[bestE]![order[bestE]![head[bestE]!]!]!) bestE = e;
    }
    const j = order[bestE]![head[bestE]!]!;
    used[j] = 1;
    groups[bestE]!.push(j);
  }
  return groups.map((g) => g.sort((a, b) => a - b));
}

export function sharingInnerPartition(scores: Float64Array[], size: number): Partition {
  return rankings(scores).map((o) => o.slice(0, size).sort((a, b) => a - b));
}

/**
 * LLaMA-MoE's inter-sharing ("residual") split: a residual (always-on, shared) expert of `residualSize` neurons
 * takes the neurons most experts would pick — repeatedly, every expert's top-`size` list of the neurons not yet
 * residual is counted and the neurons picked by the most experts join the residual, up to its capacity — and
 * the remaining neurons are split among the routed experts without sharing (`importance`). Every neuron ends
 * in exactly one place: the residual expert or one routed expert.
 */
export function sharingInterPartition(scores: Float64Array[], size: number, residualSize: number): { residual: number[]; experts: Partition } {
  const E = scores.length;
  const h = scores[0]!.length;
  if (residualSize + E * size !== h) throw new MoelabError(`a residual of ${residualSize} and ${E} experts of ${size} neurons do not cover the ${h} neurons`);
  const order = rankings(scores);
  const inResidual = new Uint8Array(h);
  const residual: number[] = [];
  while (residual.length < residualSize) {
    const count = new Int32Array(h);
    for (const o of order) {
      let n = 0;
      for (const j of o) {
        if (n >= size) break;
        if (inResidual[j]) continue;
        count[j]!++;
        n++;
      }
    }
    let top = 0;
    for (const c of count) top = Math.max(top, c);
    if (top === 0) break;
    for (let j = 0; j < h && residual.length < residualSize; j++)
      if (count[j] === top) {
        inResidual[j] = 1;
        residual.push(j);
      }
  }
  const experts = greedyByImportance(scores, size, Uint8Array.from(inResidual));
  return { residual: residual.sort((a, b) => a - b), experts };
}
