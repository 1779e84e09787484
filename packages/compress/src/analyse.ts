/**
 * The routing and expert report of a trained MoE (docs/compression.md#analysis): the "closer look"
 * statistics (Lo et al. 2024, arXiv 2406.18219; code kamanphoebe/Look-into-MoEs) and the routing
 * dashboard, per MoE layer, from one observer pass and the weights.
 *
 *   load f_e = count_e / Σ count (Σ_e f_e = 1), CV = std(f)/mean(f), MaxVio = max_e f_e·E − 1, dead = #{f_e = 0}
 *   entropy H̄ = mean_t H(p_t) and H̄ / log E
 *   co-activation PMI_ij = log(C_ij / (P(i) P(j))), C_ij = coact_ij / T, P(i) = count_i / T (mean over pairs with C_ij > 0)
 *   domain specialisation: JS divergence between P(e | d) and P(e) per domain, and the largest lift P(e|d)/P(e)
 *   weight similarity: mean pairwise cosine of the experts' flattened weights (per expert tensor)
 *   router similarity: mean pairwise cosine of the router-logit columns
 *   super experts: max |output| per expert and the experts flagged by the super-expert rule
 */
import type { Module } from '@moelab/core';
import { tf } from '@moelab/core';
import type { RoutingObserver } from './observer.js';
import { superExperts } from './prune.js';
import { moeLayers } from './surgery.js';

export interface LayerReport {
  layer: string;
  experts: number;
  tokens: number;
  load: number[];
  cv: number;
  maxVio: number;
  dead: number;
  entropy: number | null;
  normalisedEntropy: number | null;
  meanPMI: number | null;
  /** Domain → JS divergence (nats) between its expert distribution and the overall one. */
  domainJS: Record<string, number>;
  /** Domain → the largest lift P(e|d)/P(e) and its expert. */
  domainTopLift: Record<string, { expert: number; lift: number }>;
  /** Expert-bank tensor (short name) → mean pairwise cosine between experts. */
  weightSimilarity: Record<string, number>;
  routerSimilarity: number | null;
  maxAbsOut: number[];
  superExperts: number[];
}

export interface AnalysisReport {
  layers: LayerReport[];
}

const kl = (p: ArrayLike<number>, q: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < p.length; i++) if (p[i]! > 0 && q[i]! > 0) s += p[i]! * Math.log(p[i]! / q[i]!);
  return s;
};

/** Mean off-diagonal cosine between the experts of a tensor stacked along axis 0. */
function meanPairCosine(t: tf.Tensor): number {
  return tf.tidy(() => {
    const E = t.shape[0]!;
    const flat = tf.reshape(t, [E, -1]);
    const unit = tf.div(flat, tf.add(tf.norm(flat, 'euclidean', 1, true), 1e-12));
    const g = tf.matMul(unit, unit, false, true).dataSync();
    let s = 0;
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) if (i !== j) s += g[i * E + j]!;
    return E > 1 ? s / (E * (E - 1)) : 1;
  });
}

export function analyse(model: Module, observer: RoutingObserver): AnalysisReport {
  const layers = moeLayers(model).filter((l) => observer.layers.has(l.path));
  const supers = superExperts(
    observer,
    layers.map((l) => l.path),
  );
  const out: LayerReport[] = [];
  for (const l of layers) {
    const s = observer.layer(l.path);
    const E = l.numExperts;
    const load = Array.from(s.load());
    const mean = 1 / E;
    const sd = Math.sqrt(load.reduce((a, f) => a + (f - mean) ** 2, 0) / E);
    const H = s.meanEntropy();
    let pmi = 0;
    let pairs = 0;
    const T = s.tokens;
    if (T > 0)
      for (let i = 0; i < E; i++)
        for (let j = 0; j < E; j++) {
          if (i === j) continue;
          const c = s.coact[i * E + j]! / T;
          const pi = s.count[i]! / T;
          const pj = s.count[j]! / T;
          if (c > 0) {
            pmi += Math.log(c / (pi * pj));
            pairs++;
          }
        }
    const domainJS: Record<string, number> = {};
    const domainTopLift: Record<string, { expert: number; lift: number }> = {};
    const totalCount = s.count.reduce((a, b) => a + b, 0);
    if (totalCount > 0) {
      // Overall distribution over the domain-tagged tokens only.
      const pooled = new Float64Array(E);
      for (const c of s.domainCounts.values()) for (let e = 0; e < E; e++) pooled[e]! += c[e]!;
      const pz = pooled.reduce((a, b) => a + b, 0);
      if (pz > 0)
        for (const [d, c] of s.domainCounts) {
          const cz = c.reduce((a, b) => a + b, 0);
          if (!(cz > 0)) continue;
          const p = Array.from(c, (v) => v / cz);
          const q = Array.from(pooled, (v) => v / pz);
          const m = p.map((v, i) => (v + q[i]!) / 2);
          domainJS[d] = (kl(p, m) + kl(q, m)) / 2;
          let best = { expert: 0, lift: 0 };
          p.forEach((v, e) => {
            const lift = q[e]! > 0 ? v / q[e]! : 0;
            if (lift > best.lift) best = { expert: e, lift };
          });
          domainTopLift[d] = best;
        }
    }
    const weightSimilarity: Record<string, number> = {};
    for (const [name, v] of l.layer.experts.namedParameters()) if (v.shape[0] === E && v.shape.length >= 2) weightSimilarity[name] = meanPairCosine(v);
    const cos = s.logitCosine();
    let routerSimilarity: number | null = null;
    if (cos) {
      let acc = 0;
      for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) if (i !== j) acc += cos[i * E + j]!;
      routerSimilarity = E > 1 ? acc / (E * (E - 1)) : 1;
    }
    out.push({
      layer: l.path,
      experts: E,
      tokens: s.tokens,
      load,
      cv: mean > 0 ? sd / mean : 0,
      maxVio: Math.max(...load) * E - 1,
      dead: load.filter((f) => f === 0).length,
      entropy: H,
      normalisedEntropy: H === null ? null : H / Math.log(E),
      meanPMI: pairs ? pmi / pairs : null,
      domainJS,
      domainTopLift,
      weightSimilarity,
      routerSimilarity,
      maxAbsOut: Array.from(s.maxAbsOut),
      superExperts: supers.get(l.path) ?? [],
    });
  }
  return { layers: out };
}
