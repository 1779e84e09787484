/**
 * Fitting MoEfication's MLP selection router to the groups' activation mass (Zhang et al., arXiv 2110.01786,
 * §3.2; official code thunlp/MoEfication), docs/upcycling.md#moefication:
 *
 *   x̂ = x/‖x‖;   r(x) = W_b tanh(W_a x̂)                     W_a [E, d] (from the group centres), W_b [E, E] (from I)
 *   s_e(x) = Σ_{j∈e} |a_j(x)|                               the group's activation mass (ReLU: Σ relu(x·w_j))
 *   y_e = s_e(x) / max_{batch, e'} s_e'                      targets in [0, 1], scaled per batch of 512
 *   L = mean_{t,e} BCEWithLogits(r_e(x_t), y_te)             Adam (lr 0.01), a few epochs
 *
 * The fit regresses a new tensor on statistics of the seed (like k-means fits the centres); it never touches a
 * source tensor nor the task loss, so the upcycler contract (no training) holds. Deterministic: the tokens are
 * shuffled by a seeded RNG, the arithmetic is float64 in JavaScript. The last 10% of the tokens are held out;
 * of the epochs, the one whose router covers the most held-out activation mass with its top-k is kept.
 */
import { Rng } from '@moelab/core';

export interface RouterFitOptions {
  epochs: number;
  lr: number;
  batch: number;
  /** Groups the router selects per token (the coverage is measured at this k). */
  k: number;
  seed: number;
  label: string;
}

export interface RouterFitResult {
  wa: Float64Array;
  wb: Float64Array;
  /** Mean share of a held-out token's activation mass in the router's top-k groups, before and after the fit. */
  coverageBefore: number;
  coverageAfter: number;
  /** Mean BCE on the training tokens in the first and in the kept epoch. */
  lossFirst: number;
  lossKept: number;
}

/** Per-token group masses s [N, E] from hidden activations `acts` [N, h] and the groups. */
export function groupMass(acts: Float32Array, N: number, h: number, groups: number[][]): Float64Array {
  const E = groups.length;
  const s = new Float64Array(N * E);
  for (let t = 0; t < N; t++)
    groups.forEach((g, e) => {
      let m = 0;
      for (const j of g) m += Math.abs(acts[t * h + j]!);
      s[t * E + e] = m;
    });
  return s;
}

function logits(x: Float64Array, wa: Float64Array, wb: Float64Array, E: number, d: number, z: Float64Array, r: Float64Array): void {
  for (let e = 0; e < E; e++) {
    let v = 0;
    for (let a = 0; a < d; a++) v += wa[e * d + a]! * x[a]!;
    z[e] = Math.tanh(v);
  }
  for (let e = 0; e < E; e++) {
    let v = 0;
    for (let f = 0; f < E; f++) v += wb[e * E + f]! * z[f]!;
    r[e] = v;
  }
}

/** Mean share of the activation mass in the top-k of r, over tokens with any mass. */
function coverage(X: Float64Array[], S: Float64Array, idx: number[], wa: Float64Array, wb: Float64Array, E: number, k: number): number {
  const d = X[0]!.length;
  const z = new Float64Array(E);
  const r = new Float64Array(E);
  let sum = 0;
  let n = 0;
  for (const t of idx) {
    let total = 0;
    for (let e = 0; e < E; e++) total += S[t * E + e]!;
    if (total === 0) continue;
    logits(X[t]!, wa, wb, E, d, z, r);
    const top = Array.from({ length: E }, (_, e) => e)
      .sort((a, b) => r[b]! - r[a]! || a - b)
      .slice(0, k);
    sum += top.reduce((acc, e) => acc + S[t * E + e]!, 0) / total;
    n++;
  }
  return n ? sum / n : 0;
}

/**
 * Fits W_a, W_b (starting from `wa0`, `wb0`) on FFN inputs `rows` and group masses `S` [N, E]. `epochs: 0`
 * returns the start point with its coverage.
 */
export function fitSelectionRouter(rows: Float32Array[], S: Float64Array, wa0: Float64Array, wb0: Float64Array, o: RouterFitOptions): RouterFitResult {
  const N = rows.length;
  const d = rows[0]?.length ?? 0;
  const E = wb0.length === 0 ? 0 : Math.round(Math.sqrt(wb0.length));
  const X = rows.map((r) => {
    const n = Math.hypot(...r) || 1;
    return Float64Array.from(r, (v) => v / n);
  });
  const nTrain = N < 10 ? N : Math.floor(N / 10) * 9;
  const held = Array.from({ length: N - nTrain }, (_, i) => nTrain + i);
  const evalIdx = held.length ? held : Array.from({ length: N }, (_, i) => i);
  let wa = Float64Array.from(wa0);
  let wb = Float64Array.from(wb0);
  const coverageBefore = coverage(X, S, evalIdx, wa, wb, E, o.k);
  let best = { wa: Float64Array.from(wa), wb: Float64Array.from(wb), cov: coverageBefore, loss: Number.NaN };
  let lossFirst = Number.NaN;
  const rng = Rng.derive(o.seed, 'router-fit', o.label);
  const order = Array.from({ length: nTrain }, (_, i) => i);
  const params = [wa, wb];
  const m = params.map((p) => new Float64Array(p.length));
  const v = params.map((p) => new Float64Array(p.length));
  const [b1, b2, eps] = [0.9, 0.999, 1e-8];
  let step = 0;
  const z = new Float64Array(E);
  const r = new Float64Array(E);
  const dz = new Float64Array(E);
  for (let epoch = 0; epoch < o.epochs; epoch++) {
    for (let i = nTrain - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    let epochLoss = 0;
    for (let b0 = 0; b0 < nTrain; b0 += o.batch) {
      const batch = order.slice(b0, b0 + o.batch);
      let max = 0;
      for (const t of batch) for (let e = 0; e < E; e++) max = Math.max(max, S[t * E + e]!);
      const ga = new Float64Array(wa.length);
      const gb = new Float64Array(wb.length);
      const scale = 1 / (batch.length * E);
      for (const t of batch) {
        const x = X[t]!;
        logits(x, wa, wb, E, d, z, r);
        dz.fill(0);
        for (let e = 0; e < E; e++) {
          const y = max > 0 ? S[t * E + e]! / max : 0;
          const re = r[e]!;
          // BCE with logits, stable: max(r, 0) − r·y + log(1 + e^{−|r|})
          epochLoss += (Math.max(re, 0) - re * y + Math.log1p(Math.exp(-Math.abs(re)))) * scale;
          const delta = (1 / (1 + Math.exp(-re)) - y) * scale;
          for (let f = 0; f < E; f++) {
            gb[e * E + f]! += delta * z[f]!;
            dz[f]! += delta * wb[e * E + f]!;
          }
        }
        for (let f = 0; f < E; f++) {
          const g = dz[f]! * (1 - z[f]! * z[f]!);
          for (let a = 0; a < d; a++) ga[f * d + a]! += g * x[a]!;
        }
      }
      step++;
      [ga, gb].forEach((g, p) => {
        const w = params[p]!;
        for (let i = 0; i < w.length; i++) {
          m[p]![i] = b1 * m[p]![i]! + (1 - b1) * g[i]!;
          v[p]![i] = b2 * v[p]![i]! + (1 - b2) * g[i]! * g[i]!;
          const mh = m[p]![i]! / (1 - b1 ** step);
          const vh = v[p]![i]! / (1 - b2 ** step);
          w[i]! -= (o.lr * mh) / (Math.sqrt(vh) + eps);
        }
      });
    }
    epochLoss /= Math.max(1, Math.ceil(nTrain / o.batch));
    if (epoch === 0) lossFirst = epochLoss;
    const cov = coverage(X, S, evalIdx, wa, wb, E, o.k);
    if (epoch === 0 || cov > best.cov) best = { wa: Float64Array.from(wa), wb: Float64Array.from(wb), cov, loss: epochLoss };
  }
  [wa, wb] = [best.wa, best.wb];
  return { wa, wb, coverageBefore, coverageAfter: best.cov, lossFirst, lossKept: best.loss };
}
