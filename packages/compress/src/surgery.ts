/**
 * Model surgery on trained MoE models (docs/compression.md#surgery-primitives). Every primitive works
 * through the registry: the new model is built from a rewritten spec, and each tensor is carried over
 * by name, so it works for any router and any expert bank that stacks its experts along an axis.
 *
 *   reduceExperts  new tensor[g] = Σ_e M[g, e] · old tensor[e] along every expert axis (M: E' × E; one
 *                  matrix for the router's tensors, one for the expert bank's): the general form.
 *   sliceExperts   M = rows of the identity picked by `keep` (router rows, router biases and experts
 *                  kept; E' = |keep|): softmax over the kept logits ≡ −∞ on the others (invariant I0.1).
 *   collapseGroups one expert per group: the expert bank mixes the members with `weights`, the router
 *                  row follows `routerRow` (first member, mean, or frequency-weighted mean).
 *   bindExperts    E unchanged: every member slot of a group holds the same merged weights, so a token
 *                  routed to two members of one group gets Σ of both gate weights on that expert.
 *   maskExperts    runtime only: −∞ added to the masked logits before the softmax.
 *   logitOverride  runtime only (SteerMoE): z_e ← max(z) + 0.01 for forced, min(z) − 0.01 for blocked.
 *
 * The expert axes of a tensor are found by building the model a second time with different expert
 * counts and comparing shapes, so no tensor layout is hard-coded here.
 */
import {
  buildModel,
  type LanguageModel,
  type Module,
  MoELayer,
  MoelabError,
  type NodeSpec,
  type Registry,
  type RouterLogitEdit,
  resolveConfig,
  tf,
} from '@moelab/core';

export type Model = Module & LanguageModel;

/** A model with the spec it was built from (what a checkpoint holds). */
export interface SpecModel {
  spec: NodeSpec;
  model: Model;
}

/** One MoE layer of a model: its path, distinct-block index and expert count. */
export interface MoELayerInfo {
  path: string;
  /** Index of the distinct block (`stack.groupSize` of them) that holds the layer. */
  block: number;
  numExperts: number;
  layer: MoELayer;
}

const LAYER_PATH = /^transformer\.layers\.(\d+)\.ffn$/;

/** The `moe` feed-forward layers of a model, in order (layers of other kinds are not listed). */
export function moeLayers(model: Module): MoELayerInfo[] {
  const out: MoELayerInfo[] = [];
  for (const m of model.modules()) {
    if (!(m instanceof MoELayer)) continue;
    const match = LAYER_PATH.exec(m.path);
    if (!match) continue;
    out.push({ path: m.path, block: Number(match[1]), numExperts: m.experts.numExperts, layer: m });
  }
  return out;
}

/** The MoE layer at `path`, with an error that lists the model's MoE layers. */
export function moeLayer(model: Module, path: string): MoELayerInfo {
  const layers = moeLayers(model);
  const found = layers.find((l) => l.path === path);
  if (!found) {
    const m = model.modules().find((x) => x.path === path);
    throw new MoelabError(
      m
        ? `layer "${path}" (${m.constructor.name}) has no routed experts to prune or merge; moe layers: ${layers.map((l) => l.path).join(', ') || 'none'}`
        : `the model has no layer "${path}"; moe layers: ${layers.map((l) => l.path).join(', ') || 'none'}`,
      path,
    );
  }
  return found;
}

type Json = Record<string, unknown>;
const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

/** The per-block spec list of a transformer-lm spec (`blocks`, or `block` repeated groupSize times). */
function blockSpecs(spec: NodeSpec, registry: Registry): Json[] {
  if (typeof spec !== 'object' || spec === null) throw new MoelabError('the model spec must be an object node to rewrite its experts', '$');
  const s = spec as Json;
  if (Array.isArray(s.blocks)) return s.blocks as Json[];
  const { config } = resolveConfig(registry, 'model', spec);
  const G = (config.stack as { groupSize: number }).groupSize;
  return Array.from({ length: G }, () => clone((s.block ?? config.block) as Json));
}

/** `spec` with the routed-expert count of every distinct block in `counts` rewritten (labels sliced by `keep`). */
export function specWithExperts(spec: NodeSpec, registry: Registry, counts: Map<number, { experts: number; keep?: number[] }>): NodeSpec {
  const out = clone(spec) as Json;
  const blocks = blockSpecs(out as NodeSpec, registry).map(clone);
  for (const [b, c] of counts) {
    const block = blocks[b];
    const ffn = block?.ffn as Json | undefined;
    if (!ffn || typeof ffn !== 'object' || ffn.type !== 'moe')
      throw new MoelabError(`block ${b} has no routed-expert ffn (type "moe") to rewrite`, `$.blocks[${b}].ffn`);
    ffn.experts = c.experts;
    if (Array.isArray(ffn.expertNames)) ffn.expertNames = c.keep ? c.keep.map((e) => (ffn.expertNames as string[])[e]) : undefined;
  }
  const same = blocks.every((b) => JSON.stringify(b) === JSON.stringify(blocks[0]));
  if (same && !Array.isArray(out.blocks)) out.block = blocks[0];
  else {
    out.blocks = blocks;
    delete out.block;
  }
  return out as NodeSpec;
}

/** Experts per token (`k`) of a layer's router config when it has one. */
function routerK(registry: Registry, spec: NodeSpec, block: number): number | undefined {
  const ffn = blockSpecs(spec, registry)[block]?.ffn as Json | undefined;
  if (!ffn?.router) return undefined;
  try {
    const { config } = resolveConfig(registry, 'router', ffn.router as NodeSpec);
    return typeof config.k === 'number' ? config.k : undefined;
  } catch {
    return undefined;
  }
}

/** How one layer's experts are reduced: E' rows over the E old experts, for the router and for the expert bank. */
export interface ExpertReduction {
  /** [E'][E]: new expert g of the bank = Σ_e experts[g][e] · old expert e. */
  experts: number[][];
  /** [E'][E]: new router row g = Σ_e router[g][e] · old row e (default: `experts`). */
  router?: number[][];
  /** Labels of the new experts, when the spec has `expertNames`. */
  keep?: number[];
}

/**
 * The general reduction: for every MoE layer in `plan`, each tensor of the layer is mixed along its
 * expert axes (router tensors with `router`, everything else with `experts`); every other tensor is
 * copied. Returns the new spec and model (the old model is left as it was).
 */
export function reduceExperts(registry: Registry, source: SpecModel, plan: Map<string, ExpertReduction>, seed = 0): SpecModel {
  const layers = new Map(moeLayers(source.model).map((l) => [l.path, l]));
  const counts = new Map<number, { experts: number; keep?: number[] }>();
  for (const [path, r] of plan) {
    const info = moeLayer(source.model, path);
    const E = info.numExperts;
    const E2 = r.experts.length;
    if (E2 < 1) throw new MoelabError('a layer must keep at least one expert', path);
    for (const m of [r.experts, r.router ?? r.experts])
      if (m.length !== E2 || m.some((row) => row.length !== E))
        throw new MoelabError(`the reduction matrices must be ${E2} × ${E} (new experts × old experts)`, path);
    const k = routerK(registry, source.spec, info.block);
    if (k !== undefined && E2 < k)
      throw new MoelabError(`${E2} experts would be left in this layer, fewer than the router's top-k = ${k}; keep at least ${k}`, path);
    const prev = counts.get(info.block);
    if (prev && prev.experts !== E2)
      throw new MoelabError(`layer ${path} is shared by several repeats and got two different expert counts (${prev.experts}, ${E2})`, path);
    counts.set(info.block, { experts: E2, keep: r.keep });
  }
  const spec = specWithExperts(source.spec, registry, counts);
  const model = buildModel<Model>(spec, registry, seed);
  try {
    const old = new Map(source.model.stateDict());
    const fresh = model.stateDict();
    const names = new Set(fresh.map(([n]) => n));
    for (const [name] of old)
      if (!names.has(name))
        throw new MoelabError(`tensor ${name} has no place in the reduced model (an expert bank that does not stack its experts along one axis?)`, name);
    for (const [name, v] of fresh) {
      const src = old.get(name);
      if (!src) throw new MoelabError(`tensor ${name} of the reduced model has no source tensor`, name);
      const path = [...plan.keys()].find((p) => name.startsWith(`${p}.`));
      if (!path) {
        if (!sameShape(src.shape, v.shape)) throw new MoelabError(`tensor ${name} changed shape outside the reduced layers`, name);
        v.assign(src);
        continue;
      }
      const r = plan.get(path)!;
      const E = layers.get(path)!.numExperts;
      const E2 = r.experts.length;
      const m = name.startsWith(`${path}.router.`) ? (r.router ?? r.experts) : r.experts;
      if (E === E2) {
        // Same count: the expert axes cannot be told from the shapes; mix along those found by probing.
        const probe = expertAxesOf(registry, source, path, seed).get(name) ?? [];
        v.assign(mixAxes(src, probe, m));
        continue;
      }
      const axes = src.shape.flatMap((n, a) => (n === E && v.shape[a] === E2 ? [a] : []));
      const other = src.shape.every((n, a) => axes.includes(a) || n === v.shape[a]);
      if (!other) throw new MoelabError(`tensor ${name} changed shape [${src.shape}] → [${v.shape}] in a way the expert count does not explain`, name);
      v.assign(mixAxes(src, axes, m));
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { spec, model };
}

const sameShape = (a: number[], b: number[]) => a.length === b.length && a.every((n, i) => n === b[i]);

/** Mix `t` along each axis in `axes` with M [E'][E]: out[.., g, ..] = Σ_e M[g][e] t[.., e, ..]. */
export function mixAxes(t: tf.Tensor, axes: number[], m: number[][]): tf.Tensor {
  return tf.tidy(() => {
    let out = t;
    const M = tf.tensor2d(m);
    for (const a of axes) {
      const perm = [a, ...out.shape.map((_, i) => i).filter((i) => i !== a)];
      const moved = tf.transpose(out, perm);
      const flat = tf.reshape(moved, [moved.shape[0]!, -1]);
      const mixed = tf.reshape(tf.matMul(M, flat), [m.length, ...moved.shape.slice(1)]);
      const inv = perm.map((_, i) => perm.indexOf(i));
      out = tf.transpose(mixed, inv);
    }
    return out;
  });
}

const axesCache = new WeakMap<Module, Map<string, Map<string, number[]>>>();

/**
 * For every tensor of the MoE layer `path`: the axes along which it indexes experts, found by building
 * the model once more with one expert more in that layer and comparing shapes.
 */
export function expertAxesOf(registry: Registry, source: SpecModel, path: string, seed = 0): Map<string, number[]> {
  let byLayer = axesCache.get(source.model);
  if (!byLayer) {
    byLayer = new Map();
    axesCache.set(source.model, byLayer);
  }
  const hit = byLayer.get(path);
  if (hit) return hit;
  const info = moeLayer(source.model, path);
  const E = info.numExperts;
  const spec = specWithExperts(source.spec, registry, new Map([[info.block, { experts: E + 1 }]]));
  const probe = buildModel<Model>(spec, registry, seed);
  const out = new Map<string, number[]>();
  try {
    const bigger = new Map(probe.stateDict());
    for (const [name, v] of source.model.stateDict()) {
      if (!name.startsWith(`${path}.`)) continue;
      const w = bigger.get(name);
      if (!w) throw new MoelabError(`tensor ${name} has no counterpart when the layer has one expert more`, name);
      out.set(
        name,
        v.shape.flatMap((n, a) => (n === E && w.shape[a] === E + 1 ? [a] : [])),
      );
    }
  } finally {
    probe.dispose();
  }
  byLayer.set(path, out);
  return out;
}

/** One-hot rows picking `keep` out of E. */
export function selection(keep: number[], E: number): number[][] {
  return keep.map((e) => Array.from({ length: E }, (_, j) => (j === e ? 1 : 0)));
}

/** Keep the experts `keep` (sorted, distinct) of every layer in the map: router rows, biases and experts. */
export function sliceExperts(registry: Registry, source: SpecModel, keep: Map<string, number[]>, seed = 0): SpecModel {
  const plan = new Map<string, ExpertReduction>();
  for (const [path, ids] of keep) {
    const { numExperts: E } = moeLayer(source.model, path);
    const sorted = [...new Set(ids)].sort((a, b) => a - b);
    for (const e of sorted) if (!Number.isInteger(e) || e < 0 || e >= E) throw new MoelabError(`expert id ${e} is out of range [0, ${E})`, path);
    plan.set(path, { experts: selection(sorted, E), keep: sorted });
  }
  return reduceExperts(registry, source, plan, seed);
}

/** How `collapseGroups` builds the router row of a merged group. */
export type RouterRowRule = 'first' | 'mean' | 'frequency';

/**
 * One expert per group (HC-SMoE / UNCURL style, fewer router rows): the new expert g is
 * Σ_{e∈G_g} w_e · expert_e / Σ w_e with `weights` (default uniform), its router row follows `rule`
 * (`frequency` uses `weights` too). Groups must partition the layer's experts.
 */
export function collapseGroups(
  registry: Registry,
  source: SpecModel,
  groups: Map<string, number[][]>,
  o: { rule: RouterRowRule; weights?: Map<string, ArrayLike<number>> },
  seed = 0,
): SpecModel {
  const plan = new Map<string, ExpertReduction>();
  for (const [path, gs] of groups) {
    const { numExperts: E } = moeLayer(source.model, path);
    checkPartition(gs, E, path);
    const w = o.weights?.get(path);
    const mix = (weighted: boolean) =>
      gs.map((g) => {
        const row = new Array<number>(E).fill(0);
        const ws = g.map((e) => (weighted && w ? w[e]! : 1));
        const total = ws.reduce((a, b) => a + b, 0) || g.length;
        g.forEach((e, i) => {
          row[e] = (total > 0 ? ws[i]! : 1) / (total > 0 ? total : g.length);
        });
        return row;
      });
    const router =
      o.rule === 'first'
        ? selection(
            gs.map((g) => g[0]!),
            E,
          )
        : mix(o.rule === 'frequency');
    plan.set(path, { experts: mix(true), router, keep: gs.map((g) => g[0]!) });
  }
  return reduceExperts(registry, source, plan, seed);
}

/** Groups must be non-empty, disjoint and cover 0..E-1. */
export function checkPartition(groups: number[][], E: number, where: string): void {
  const seen = new Uint8Array(E);
  for (const g of groups) {
    if (g.length === 0) throw new MoelabError('a group of experts is empty', where);
    for (const e of g) {
      if (!Number.isInteger(e) || e < 0 || e >= E) throw new MoelabError(`expert id ${e} is out of range [0, ${E})`, where);
      if (seen[e]) throw new MoelabError(`expert ${e} is in two groups`, where);
      seen[e] = 1;
    }
  }
  const missing = [...seen].flatMap((s, e) => (s ? [] : [e]));
  if (missing.length) throw new MoelabError(`experts ${missing.join(', ')} are in no group (groups must cover every expert)`, where);
}

/**
 * MC-SMoE binding: the layer keeps all E router rows and E expert slots; every member slot of group g
 * receives `merged(g, name)` — the merged tensor of that group for the expert-bank tensor `name`, in the
 * layout of one expert (the tensor with its expert axis removed). Modifies `source.model` in place.
 */
export function bindExperts(
  registry: Registry,
  source: SpecModel,
  path: string,
  groups: number[][],
  merged: (group: number, name: string, slices: tf.Tensor[]) => tf.Tensor,
  seed = 0,
): void {
  const { numExperts: E } = moeLayer(source.model, path);
  checkPartition(groups, E, path);
  const axes = expertAxesOf(registry, source, path, seed);
  for (const [name, v] of source.model.stateDict()) {
    if (!name.startsWith(`${path}.experts.`)) continue;
    const ax = axes.get(name) ?? [];
    if (ax.length !== 1) throw new MoelabError(`expert tensor ${name} has ${ax.length} expert axes; binding needs exactly one`, name);
    const a = ax[0]!;
    const next = tf.tidy(() => {
      const slices = tf.unstack(v, a);
      const out = slices.slice();
      groups.forEach((g, gi) => {
        const m = merged(
          gi,
          name,
          g.map((e) => slices[e]!),
        );
        if (!sameShape(m.shape, slices[0]!.shape)) throw new MoelabError(`merged tensor has shape [${m.shape}], one expert's is [${slices[0]!.shape}]`, name);
        for (const e of g) out[e] = m;
      });
      return tf.stack(out, a);
    });
    v.assign(next);
    next.dispose();
  }
}

/** Runtime −∞ masking of the experts `masked` (before the softmax / top-k): pruning without slicing. */
export function maskExperts(masked: Iterable<number>): RouterLogitEdit {
  const ids = [...masked];
  return (logits) =>
    tf.tidy(() => {
      const E = logits.shape[1];
      const add = new Float32Array(E);
      for (const e of ids) {
        if (!Number.isInteger(e) || e < 0 || e >= E) throw new MoelabError(`masked expert id ${e} is out of range [0, ${E})`);
        add[e] = Number.NEGATIVE_INFINITY;
      }
      return tf.add(logits, tf.tensor2d(add, [1, E])) as tf.Tensor2D;
    });
}

/**
 * SteerMoE's intervention: forced experts get max_e z_e + 0.01 (in every token's top-k when at most k
 * are forced), blocked ones min_e z_e − 0.01 (never selected while E − |block| ≥ k). Applied to the
 * logits, which differ from log-softmax by a per-token constant, so the selection is the same.
 */
export function logitOverride(force: Iterable<number>, block: Iterable<number>): RouterLogitEdit {
  const f = [...force];
  const b = [...block];
  for (const e of f) if (b.includes(e)) throw new MoelabError(`expert ${e} is both forced and blocked`);
  return (logits) =>
    tf.tidy(() => {
      const [T, E] = logits.shape;
      for (const e of [...f, ...b]) if (!Number.isInteger(e) || e < 0 || e >= E) throw new MoelabError(`steered expert id ${e} is out of range [0, ${E})`);
      if (f.length === 0 && b.length === 0) return logits.clone();
      const z = logits.dataSync();
      const out = new Float32Array(z);
      for (let t = 0; t < T; t++) {
        let hi = Number.NEGATIVE_INFINITY;
        let lo = Number.POSITIVE_INFINITY;
        for (let e = 0; e < E; e++) {
          const v = z[t * E + e]!;
          if (v > hi) hi = v;
          if (v < lo) lo = v;
        }
        for (const e of f) out[t * E + e] = hi + 0.01;
        for (const e of b) out[t * E + e] = lo - 0.01;
      }
      return tf.tensor2d(out, [T, E]);
    });
}
