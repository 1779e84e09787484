/**
 * EEP, Efficient Expert Pruning (Liu et al. 2024, arXiv 2407.00945; official code
 * imagination-research/EEP applies searched patterns, the search itself is unreleased),
 * docs/compression.md#eep: a gradient-free search for the experts to keep, judged only by the task loss.
 *
 * EEP parameterises a layer by a router mapping R ∈ R^{E'×E} and a merging matrix M ∈ R^{E'×E}:
 *
 *   p'_t = softmax(z_t) Rᵀ,  S'_t = TopK(p'_t),  g'_{t,i} = p'_{t,i} / Σ_{j∈S'_t} p'_{t,j},   expert'_i = Σ_j M_{ij} expert_j
 *
 * Its pruning phase restricts R = M to selections (one 1 per row). `routerRemap(R)` is the routing
 * part as a router-logit edit for a square R (E' = E, zero rows for removed experts):
 * z'_t = log(softmax(z_t) Rᵀ), so softmax(z') = p' / Σ p' and the top-k and renormalised weights are
 * EEP's; a selection R there equals slicing the kept experts under a router that renormalises its top-k.
 *
 * The search (`eepSearch`, ours: an elitist evolution over keep-sets): every candidate keeps
 * E − round(ratio · E) experts per layer; its fitness is the mean next-token cross-entropy on the
 * search windows with the removed experts masked by −∞ (≡ slicing, invariant I0.1). Each generation
 * keeps the better half and refills the population with mutants of it (a mutant swaps one kept expert
 * for a removed one in one random layer). Seeded: the same seed, model and windows give the same result.
 *
 * The merging phase (`eepMerge`): starting from the pruning result (M = R = the selection of the kept
 * experts), an elitist evolution over continuous M and R, judged by the same loss. A mutant adds
 * σ·N(0, 1) to one entry of M and one entry of R in one random layer, so a kept expert takes in a
 * fraction of another (possibly removed) expert's weights and the router row follows. R acts on the
 * router's rows (logit space, z' = R z, biases alike) rather than on probabilities: then the merged
 * layer is an ordinary MoE layer with E' experts and the result is an ordinary checkpoint
 * (`reduceExperts`). At a selection both forms route identically (invariant I0.1), so the merging
 * phase starts exactly where the pruning phase ended and, being elitist, never ends worse on its windows.
 */
import { MoelabError, type Registry, Rng, type RouterLogitEdit, tf } from '@moelab/core';
import {
  type ExpertReduction,
  expertAxesOf,
  maskExperts,
  type Model,
  mixAxes,
  moeLayer,
  moeLayers,
  reduceExperts,
  type SpecModel,
  selection,
} from './surgery.js';
import { windowsLoss } from './windows.js';

/** EEP's router mapping p' = softmax(z) Rᵀ as a logit edit z' = log(p') for a square R [E][E] (zero rows: −∞). */
export function routerRemap(R: number[][]): RouterLogitEdit {
  const E = R.length;
  if (R.some((row) => row.length !== E)) throw new MoelabError(`the router mapping must be square (${E} × ${E}) to be a logit edit`);
  if (R.some((row) => row.some((v) => !(v >= 0)))) throw new MoelabError('the router mapping must be non-negative (it mixes probabilities)');
  return (logits) =>
    tf.tidy(() => {
      if (logits.shape[1] !== E) throw new MoelabError(`the router mapping is ${E} × ${E} but the layer has ${logits.shape[1]} experts`);
      return tf.log(tf.matMul(tf.softmax(logits), tf.tensor2d(R), false, true)) as tf.Tensor2D;
    });
}

/** The square router mapping that keeps `keep` of E experts (identity rows for kept experts, zero rows otherwise). */
export function keepMapping(keep: number[], E: number): number[][] {
  const set = new Set(keep);
  return Array.from({ length: E }, (_, i) => Array.from({ length: E }, (_, j) => (i === j && set.has(i) ? 1 : 0)));
}

export interface EEPOptions {
  /** Fraction of each layer's experts to remove, in (0, 1). */
  ratio: number;
  /** Candidates per generation (default 8). */
  population?: number;
  /** Generations after the first evaluation (default 4). */
  generations?: number;
  seed?: number;
  /** Windows per forward pass of the fitness (default 8). */
  batchSize?: number;
  /** Keep-sets to start from (e.g. a REAP plan); the rest of the first population is random. */
  init?: Map<string, number[]>[];
}

export interface EEPResult {
  /** Layer path → kept expert ids (sorted): the best candidate. */
  keep: Map<string, number[]>;
  /** Its fitness: mean next-token cross-entropy (nats) on the search windows. */
  loss: number;
  /** The unpruned model's loss on the same windows. */
  baseLoss: number;
  /** Best loss after each generation (the first entry: the initial population); never increases. */
  history: number[];
  /** Distinct candidates evaluated. */
  evaluations: number;
}

type Candidate = Map<string, number[]>;
const keyOf = (c: Candidate) => [...c.entries()].map(([p, k]) => `${p}:${k.join(',')}`).join('|');

/** Search the experts to keep (see the file comment). */
export function eepSearch(model: Model, windows: Int32Array[], o: EEPOptions): EEPResult {
  if (!(o.ratio > 0 && o.ratio < 1)) throw new MoelabError(`the pruning ratio must be in (0, 1), got ${o.ratio}`, '--ratio');
  const P = o.population ?? 8;
  const G = o.generations ?? 4;
  if (!(Number.isInteger(P) && P >= 2)) throw new MoelabError(`the population must be an integer of at least 2, got ${P}`, '--population');
  if (!(Number.isInteger(G) && G >= 0)) throw new MoelabError(`the generations must be a non-negative integer, got ${G}`, '--generations');
  if (windows.length === 0) throw new MoelabError('the search has no windows to evaluate candidates on', '--calib');
  const layers = moeLayers(model);
  if (layers.length === 0) throw new MoelabError('the model has no moe layer with routed experts to prune');
  const sizes = layers.map((l) => {
    const n = Math.round(o.ratio * l.numExperts);
    if (n < 1)
      throw new MoelabError(`ratio ${o.ratio} of ${l.numExperts} experts prunes none; use a ratio of at least ${(0.5 / l.numExperts).toFixed(3)}`, '--ratio');
    const k = (l.layer.router as { expertsPerToken?: number }).expertsPerToken;
    if (k !== undefined && l.numExperts - n < k)
      throw new MoelabError(`${l.numExperts - n} experts would be left in this layer, fewer than the router's top-k = ${k}; keep at least ${k}`, l.path);
    return l.numExperts - n;
  });
  const rng = Rng.derive(o.seed ?? 0, 'eep-search');
  const batchSize = o.batchSize ?? 8;
  const shuffled = (E: number) => {
    const ids = Array.from({ length: E }, (_, i) => i);
    for (let i = E - 1; i > 0; i--) {
      const j = Math.floor(rng.next() * (i + 1));
      [ids[i], ids[j]] = [ids[j]!, ids[i]!];
    }
    return ids;
  };
  const random = (): Candidate =>
    new Map(
      layers.map((l, i) => [
        l.path,
        shuffled(l.numExperts)
          .slice(0, sizes[i])
          .sort((a, b) => a - b),
      ]),
    );
  const mutate = (c: Candidate): Candidate => {
    const out: Candidate = new Map([...c].map(([p, k]) => [p, k.slice()]));
    const i = Math.floor(rng.next() * layers.length);
    const l = layers[i]!;
    const kept = out.get(l.path)!;
    const removed = Array.from({ length: l.numExperts }, (_, e) => e).filter((e) => !kept.includes(e));
    const a = Math.floor(rng.next() * kept.length);
    const b = Math.floor(rng.next() * removed.length);
    kept[a] = removed[b]!;
    kept.sort((x, y) => x - y);
    return out;
  };
  const seen = new Map<string, number>();
  const fitness = (c: Candidate): number => {
    const key = keyOf(c);
    const hit = seen.get(key);
    if (hit !== undefined) return hit;
    const edits = new Map(
      layers.map((l) => {
        const kept = c.get(l.path)!;
        return [l.path, maskExperts(Array.from({ length: l.numExperts }, (_, e) => e).filter((e) => !kept.includes(e)))] as const;
      }),
    );
    const loss = windowsLoss(model, windows, batchSize, edits);
    seen.set(key, loss);
    return loss;
  };
  for (const init of o.init ?? [])
    layers.forEach((l, i) => {
      const k = init.get(l.path);
      if (!k || k.length !== sizes[i]) throw new MoelabError(`a starting keep-set must keep ${sizes[i]} experts`, l.path);
    });
  const population: Candidate[] = (o.init ?? []).slice(0, P).map(
    (c) =>
      new Map(
        layers.map((l) => [
          l.path,
          c
            .get(l.path)!
            .slice()
            .sort((a, b) => a - b),
        ]),
      ),
  );
  while (population.length < P) population.push(random());
  const { best, history } = evolve(population, G, rng, fitness, mutate, keyOf);
  return { keep: best, loss: fitness(best), baseLoss: windowsLoss(model, windows, batchSize), history, evaluations: seen.size };
}

/**
 * The evolutionary loop of both EEP phases: rank the population by loss (ties by `keyOf`, else by
 * position), then for each generation keep the better half as elites and refill the population with
 * mutants of elites drawn at random. Returns the best candidate and the best loss before and after
 * every generation.
 */
function evolve<C>(
  initial: C[],
  generations: number,
  rng: Rng,
  fitness: (c: C) => number,
  mutate: (c: C) => C,
  keyOf?: (c: C) => string,
): { best: C; history: number[] } {
  const P = initial.length;
  const rank = (pop: C[]) =>
    pop
      .map((c, i) => ({ c, i, loss: fitness(c), key: keyOf?.(c) ?? '' }))
      .sort((a, b) => a.loss - b.loss || (a.key < b.key ? -1 : a.key > b.key ? 1 : a.i - b.i))
      .map((r) => r.c);
  let population = rank(initial);
  const history = [fitness(population[0]!)];
  for (let g = 0; g < generations; g++) {
    const elite = population.slice(0, Math.max(1, Math.floor(P / 2)));
    const next = elite.slice();
    while (next.length < P) next.push(mutate(elite[Math.floor(rng.next() * elite.length)]!));
    population = rank(next);
    history.push(fitness(population[0]!));
  }
  return { best: population[0]!, history };
}

export interface EEPMergeOptions {
  /** Layer path → kept expert ids: the pruning phase's result (the starting point, M = R = selection). */
  keep: Map<string, number[]>;
  /** Candidates per generation (default 8). */
  population?: number;
  /** Generations after the first evaluation (default 4). */
  generations?: number;
  /** Standard deviation of a mutation (default 0.05). */
  sigma?: number;
  seed?: number;
  /** Windows per forward pass of the fitness (default 8). */
  batchSize?: number;
}

export interface EEPMergeResult extends SpecModel {
  /** Layer path → the best M (`experts`) and R (`router`), both E' × E. */
  reductions: Map<string, ExpertReduction>;
  /** The merged model's loss on the search windows. */
  loss: number;
  /** The pruned model's (the starting selection's) loss on the same windows. */
  startLoss: number;
  /** Best loss after each generation (the first entry: the starting selection); never increases. */
  history: number[];
  /** Candidates evaluated. */
  evaluations: number;
}

type MergeCandidate = { layers: Map<string, { M: number[][]; R: number[][] }>; loss?: number };

/** EEP's merging phase (see the file comment): the merged model and its M, R per layer. */
export function eepMerge(registry: Registry, source: SpecModel, windows: Int32Array[], o: EEPMergeOptions): EEPMergeResult {
  const P = o.population ?? 8;
  const G = o.generations ?? 4;
  const sigma = o.sigma ?? 0.05;
  if (!(Number.isInteger(P) && P >= 2)) throw new MoelabError(`the population must be an integer of at least 2, got ${P}`, '--population');
  if (!(Number.isInteger(G) && G >= 0)) throw new MoelabError(`the generations must be a non-negative integer, got ${G}`, '--generations');
  if (!(sigma > 0 && Number.isFinite(sigma))) throw new MoelabError(`the mutation size must be a positive number, got ${sigma}`, '--merge-sigma');
  if (windows.length === 0) throw new MoelabError('the search has no windows to evaluate candidates on', '--calib');
  if (o.keep.size === 0) throw new MoelabError('the merging phase needs the kept experts of at least one moe layer');
  const paths = [...o.keep.keys()];
  const sizes = new Map<string, number>();
  const start: MergeCandidate = { layers: new Map() };
  for (const path of paths) {
    const { numExperts: E } = moeLayer(source.model, path);
    const kept = [...new Set(o.keep.get(path)!)].sort((a, b) => a - b);
    for (const e of kept) if (!Number.isInteger(e) || e < 0 || e >= E) throw new MoelabError(`expert id ${e} is out of range [0, ${E})`, path);
    sizes.set(path, E);
    start.layers.set(path, { M: selection(kept, E), R: selection(kept, E) });
  }
  const reductions = (c: MergeCandidate) =>
    new Map(
      paths.map((p) => [
        p,
        {
          experts: c.layers.get(p)!.M,
          router: c.layers.get(p)!.R,
          keep: o.keep
            .get(p)!
            .slice()
            .sort((a, b) => a - b),
        },
      ]),
    );
  const work = reduceExperts(registry, source, reductions(start));
  const old = new Map(source.model.stateDict());
  const vars = new Map(work.model.stateDict());
  const tensors = paths.map((path) => {
    const axes = expertAxesOf(registry, source, path);
    return [...vars.keys()]
      .filter((n) => n.startsWith(`${path}.`))
      .map((name) => ({ path, name, router: name.startsWith(`${path}.router.`), axes: axes.get(name) ?? [], src: old.get(name)! }));
  });
  const batchSize = o.batchSize ?? 8;
  let evaluations = 0;
  const assign = (c: MergeCandidate) => {
    for (const t of tensors.flat()) {
      const l = c.layers.get(t.path)!;
      if (t.axes.length === 0) continue;
      const mixed = mixAxes(t.src, t.axes, t.router ? l.R : l.M);
      vars.get(t.name)!.assign(mixed);
      mixed.dispose();
    }
  };
  const fitness = (c: MergeCandidate): number => {
    if (c.loss === undefined) {
      assign(c);
      c.loss = windowsLoss(work.model, windows, batchSize);
      evaluations++;
    }
    return c.loss;
  };
  const rng = Rng.derive(o.seed ?? 0, 'eep-merge');
  const mutate = (parent: MergeCandidate): MergeCandidate => {
    const layers = new Map([...parent.layers].map(([p, l]) => [p, { M: l.M.map((r) => r.slice()), R: l.R.map((r) => r.slice()) }]));
    const path = paths[Math.floor(rng.next() * paths.length)]!;
    const l = layers.get(path)!;
    const E = sizes.get(path)!;
    for (const m of [l.M, l.R]) {
      const g = Math.floor(rng.next() * m.length);
      const j = Math.floor(rng.next() * E);
      m[g]![j]! += sigma * rng.normal();
    }
    return { layers };
  };
  try {
    const startLoss = fitness(start);
    const population: MergeCandidate[] = [start];
    while (population.length < P) population.push(mutate(start));
    const { best, history } = evolve(population, G, rng, fitness, mutate);
    assign(best);
    return { ...work, reductions: reductions(best), loss: best.loss!, startLoss, history, evaluations };
  } catch (e) {
    work.model.dispose();
    throw e;
  }
}
