/**
 * Splitting a dense FFN into experts (docs/upcycling.md#splitting-an-ffn): the h neurons of each FFN are
 * grouped, group e becomes expert e (sliceNeurons: columns of W1/W3, rows of W2), and a router picks k
 * groups per token. For any partition (every neuron in exactly one group, the residual expert included)
 *
 *   Σ_e f_e(x) = FFN(x)      (every neuron's contribution is separable; I11)
 *
 * so with every expert active and weight 1 the MoE reproduces the dense FFN exactly. LLaMA-MoE's
 * inner-sharing groups may hold a neuron several times or not at all: with every expert active a neuron of
 * multiplicity m_j contributes m_j times, Σ_e f_e(x) = Σ_j m_j a_j(x) W2[:, j].
 *
 *   partitions: contiguous, random, balanced-kmeans (weights only); co-activation (MoEfication's graph of
 *     calibration activations, balanced E-way cut); importance, sharing-inner, sharing-inter (LLaMA-MoE's
 *     gradient importance on E data clusters; sharing-inter keeps an always-on residual expert)
 *   moefication (arXiv 2110.01786; thunlp/MoEfication): balanced k-means by default; router `moefication-mlp`
 *     at the groups' centres, fitted to the groups' activation mass when calibration tokens are given
 *     (router-fit.ts), weight 1.
 *   llama-moe (arXiv 2406.16554; pjlab-sys4nlp/llama-moe): random split by default; noisy linear gate,
 *     zero-initialised, softmax over the k selected, output scaled by E/k.
 *   moe-split: the generic form (any partition, any router).
 */
import { Config, defineEntry, type Entry, MoelabError, Node, type NodeSpec, type TSchema, Type } from '@moelab/core';
import { ffnInputs, ffnOutputGrads, hiddenActivations } from '../calibrate.js';
import type { ProvenanceEntry, UpcycleDraft, UpcycleInput, Upcycler, UpcycleSource, UpcycleTools } from '../contract.js';
import { denseAsExpert, type ExpertTensors, ffnParts, mlpExpertNode, writeExperts } from '../ffn.js';
import { type DenseFFNConfig, denseFFN, layerPrefix, modelView, replaceInBlock, selectLayers, specWithBlocks } from '../model-view.js';
import {
  balancedGraphPartition,
  balancedKMeans,
  checkPartition,
  coactivationGraph,
  contiguousPartition,
  importancePartition,
  normalisedRows,
  type Partition,
  randomPartition,
  sharingInnerPartition,
  sharingInterPartition,
} from '../partition.js';
import { fitSelectionRouter, groupMass } from '../router-fit.js';
import { copyTensor, gatherColumns, gatherRows, type WeightMap } from '../weights.js';
import { layersSchema } from './sparse-upcycle.js';

export const PARTITIONS = ['contiguous', 'random', 'balanced-kmeans', 'co-activation', 'importance', 'sharing-inner', 'sharing-inter'] as const;
export type PartitionKind = (typeof PARTITIONS)[number];
const needsImportance = (p: PartitionKind) => p === 'importance' || p === 'sharing-inner' || p === 'sharing-inter';

const routerFitSchema = Type.Object(
  {
    epochs: Type.Integer({ minimum: 0, default: 30, description: 'passes over the calibration tokens (0: keep the centres)' }),
    lr: Type.Number({ exclusiveMinimum: 0, default: 0.01, description: 'Adam learning rate' }),
    batch: Type.Integer({ minimum: 1, default: 512, description: 'tokens per step; targets are scaled by the batch maximum' }),
  },
  {
    additionalProperties: false,
    default: { epochs: 30, lr: 0.01, batch: 512 },
    description: 'moefication-mlp router: fit to the groups’ activation mass on the calibration tokens (MoEfication’s MLP selection)',
  },
);

interface SplitConfig {
  experts: number;
  k: number;
  partition: PartitionKind;
  kmeansOn: 'w1' | 'w3';
  maxIter: number;
  residual: number;
  expertSize?: number;
  maxTokens: number;
  coactivationBatch: number;
  routerFit: { epochs: number; lr: number; batch: number };
  router?: NodeSpec;
  layers: 'all' | 'every-other' | number[];
}

/** One converted layer's groups: routed experts and the always-on residual expert's neurons (if any). */
interface LayerGroups {
  experts: Partition;
  residual?: number[];
}

function splitEntry(
  name: string,
  description: string,
  reference: string,
  partition: PartitionKind,
  defaultRouter: (E: number, k: number) => NodeSpec,
): Entry<TSchema, Upcycler> {
  return defineEntry({
    kind: 'upcycler',
    name,
    description,
    reference,
    schema: Config({
      experts: Type.Integer({ minimum: 1, default: 8, description: 'E groups of h/E neurons per FFN (sharing-inter: the residual groups included)' }),
      k: Type.Integer({ minimum: 1, default: 2, description: 'routed groups computed per token' }),
      partition: Type.Union(
        PARTITIONS.map((p) => Type.Literal(p)),
        { default: partition, description: 'how neurons are grouped (docs/upcycling.md#splitting-an-ffn)' },
      ),
      kmeansOn: Type.Union([Type.Literal('w1'), Type.Literal('w3')], {
        default: 'w1',
        description: 'balanced-kmeans: which first-layer weight the neurons are clustered by',
      }),
      maxIter: Type.Integer({ minimum: 1, default: 20, description: 'balanced-kmeans iterations' }),
      residual: Type.Integer({ minimum: 1, default: 1, description: 'sharing-inter: groups of h/E neurons in the always-on residual expert' }),
      expertSize: Type.Optional(Type.Integer({ minimum: 1, description: 'sharing-inner: neurons per expert (default h/E)' })),
      maxTokens: Type.Integer({ minimum: 1, default: 4096, description: 'calibration tokens used per layer' }),
      coactivationBatch: Type.Integer({ minimum: 1, default: 8, description: 'co-activation: tokens per batch whose co-activation is clamped at 1' }),
      routerFit: routerFitSchema,
      router: Type.Optional(Node('router', { description: 'router (default: the method’s)' })),
      layers: { ...layersSchema, default: 'all' },
    }),
    create: (config): Upcycler => {
      const c = config as unknown as SplitConfig;
      return {
        carriesOptimizer: false,
        run: (input, tools) => runSplit(name, c, c.router ?? defaultRouter(c.experts - (c.partition === 'sharing-inter' ? c.residual : 0), c.k), input, tools),
      };
    },
  });
}

function runSplit(name: string, c: SplitConfig, router: NodeSpec, input: UpcycleInput, tools: UpcycleTools): UpcycleDraft {
  const seed = input.seed;
  if (!seed) throw new MoelabError(`${name} splits one dense model: pass it as the seed`, 'sources.seed');
  if (input.experts?.length) throw new MoelabError(`${name} splits one dense model; it takes no experts`, 'sources.experts');
  const view = modelView(tools.registry, seed.spec, `seed (${seed.name})`);
  const E = c.experts;
  const routed = c.partition === 'sharing-inter' ? E - c.residual : E;
  if (routed < 1) throw new MoelabError(`residual ${c.residual} leaves no routed expert of ${E}`, 'upcycler.residual');
  if (c.k > routed) throw new MoelabError(`k = ${c.k} exceeds the ${routed} routed experts`, 'upcycler.k');
  const rtype = typeof router === 'string' ? router : router.type;
  const calibration = input.calibration?.filter((s) => s.length > 0) ?? [];
  if (c.partition === 'co-activation' && !calibration.length)
    throw new MoelabError(
      'partition "co-activation" needs calibration token sequences (--calibration TEXT) to measure which neurons fire together',
      'sources.calibration',
    );
  if (needsImportance(c.partition) && !calibration.length && !input.domainSamples?.length)
    throw new MoelabError(
      `partition "${c.partition}" needs data to measure neuron importance: calibration token sequences (--calibration TEXT) or one sample list per routed expert (--domains)`,
      'sources.calibration',
    );
  if (needsImportance(c.partition) && input.domainSamples?.length && input.domainSamples.length !== routed)
    throw new MoelabError(
      `${input.domainSamples.length} domain sample lists for ${routed} routed experts: give one data cluster per routed expert`,
      'sources.domainSamples',
    );
  const chosen = selectLayers(c.layers, view.layers.length, 'upcycler');
  const ffns = new Map(view.layers.filter((l) => chosen.includes(l.index)).map((l) => [l.index, denseFFN(l, `seed (${seed.name})`)] as const));
  for (const [l, ffn] of ffns) {
    if (ffn.hidden % E !== 0) throw new MoelabError(`${E} experts do not divide the FFN's ${ffn.hidden} neurons (layer ${l})`, 'upcycler.experts');
    if (c.expertSize !== undefined && c.partition === 'sharing-inner' && c.expertSize > ffn.hidden)
      throw new MoelabError(`expertSize ${c.expertSize} exceeds the FFN's ${ffn.hidden} neurons`, 'upcycler.expertSize');
    if (!seed.weights.get(`${layerPrefix(l)}.ffn.${c.kmeansOn}.weight`) && c.partition === 'balanced-kmeans')
      throw new MoelabError(`the FFN has no ${c.kmeansOn} (kmeansOn: "w3" needs a GLU FFN)`, 'upcycler.kmeansOn');
  }
  const needInputs = c.partition === 'co-activation' || (rtype === 'moefication-mlp' && c.routerFit.epochs > 0 && calibration.length > 0);
  const inputs = needInputs ? ffnInputs(tools.registry, seed, calibration, chosen, c.maxTokens) : new Map<number, Float32Array[]>();
  const importance = needsImportance(c.partition)
    ? neuronImportance(tools, seed, input, calibration, ffns, routed, c.maxTokens)
    : new Map<number, Float64Array[]>();

  const weights: WeightMap = new Map();
  const provenance = new Map<string, ProvenanceEntry>();
  const notes: string[] = [];
  const blocks = view.layers.map((layer) => {
    const ffn = ffns.get(layer.index);
    if (!ffn) return layer.blockNode;
    const p = layerPrefix(layer.index);
    let cached: Float32Array | undefined;
    const acts = () => (cached ??= activationsOf(seed, layer.index, ffn, inputs.get(layer.index) ?? []));
    const groups = layerGroups(c, ffn, seed, layer.index, tools.seed, acts, importance.get(layer.index));
    const dense = denseAsExpert(seed, layer.index, ffn.glu);
    const slice = (idx: number[]): ExpertTensors => {
      const out: ExpertTensors = { parts: {}, from: dense.from };
      for (const part of ffnParts(ffn.glu)) out.parts[part] = part === 'w2' ? gatherRows(dense.parts[part]!, idx) : gatherColumns(dense.parts[part]!, idx);
      return out;
    };
    const size = groups.experts[0]!.length;
    writeExperts(
      weights,
      provenance,
      `${p}.ffn.experts`,
      groups.experts.map(slice),
      ffn.glu,
      `${c.partition} partition: ${groups.experts.length} groups of ${size} neurons`,
    );
    const which = ['experts'];
    if (groups.residual) {
      writeExperts(
        weights,
        provenance,
        `${p}.ffn.shared`,
        [slice(groups.residual)],
        ffn.glu,
        `residual expert: the ${groups.residual.length} neurons most experts rank important`,
      );
      which.push('shared');
    }
    for (const part of ffnParts(ffn.glu))
      for (const w of which) provenance.set(`${p}.ffn.${w}.${part}`, { ...provenance.get(`${p}.ffn.${w}.${part}`)!, op: 'slice' });
    if (rtype === 'moefication-mlp')
      notes.push(...moeficationRouter(c, seed, layer.index, ffn, groups.experts, inputs.get(layer.index) ?? [], acts, tools, weights, provenance));
    else provenance.set(`${p}.ffn.router.weight`, { op: 'new', from: [], note: `${rtype} router, its init` });
    return replaceInBlock(layer, {
      ffn: {
        type: 'moe',
        experts: groups.experts.length,
        router,
        expert: mlpExpertNode(ffn, size),
        ...(groups.residual ? { shared: mlpExpertNode(ffn, groups.residual.length) } : {}),
        expertNames: groups.experts.map((_, e) => `${seed.name}/group${e}`),
      },
    });
  });
  const converted = (n: string) => chosen.some((l) => n.startsWith(`${layerPrefix(l)}.ffn.`));
  for (const [n, t] of seed.weights) {
    if (converted(n)) continue;
    weights.set(n, copyTensor(t));
    provenance.set(n, { op: 'copy', from: [`${seed.name}:${n}`] });
  }
  notes.unshift(
    c.partition === 'sharing-inner'
      ? `${E} experts of the neurons most important on each data cluster (shared neurons allowed), ${c.k} per token; with all active a neuron counts once per expert holding it, so the dense FFN is not reproduced`
      : `${routed} experts of ${c.partition} neuron groups per FFN${c.partition === 'sharing-inter' ? ` plus a residual expert of ${c.residual} groups` : ''}, ${c.k} per token; with all active and weight 1 the dense FFN is reproduced exactly`,
  );
  return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
}

function layerGroups(
  c: SplitConfig,
  ffn: DenseFFNConfig,
  seed: UpcycleSource,
  l: number,
  rngSeed: number,
  acts: () => Float32Array,
  importance: Float64Array[] | undefined,
): LayerGroups {
  const h = ffn.hidden;
  const E = c.experts;
  const label = `${layerPrefix(l)}.ffn`;
  let groups: LayerGroups;
  switch (c.partition) {
    case 'contiguous':
      groups = { experts: contiguousPartition(h, E) };
      break;
    case 'random':
      groups = { experts: randomPartition(h, E, rngSeed, label) };
      break;
    case 'balanced-kmeans':
      groups = { experts: balancedKMeans(normalisedRows(seed.weights.get(`${label}.${c.kmeansOn}.weight`)!), E, rngSeed, label, c.maxIter) };
      break;
    case 'co-activation': {
      const a = acts();
      const N = a.length / h;
      const rows = Float32Array.from(a, Math.abs);
      groups = { experts: balancedGraphPartition(coactivationGraph(rows, N, h, c.coactivationBatch), h, E) };
      break;
    }
    case 'importance':
      groups = { experts: importancePartition(importance!, h / E) };
      break;
    case 'sharing-inner':
      return { experts: sharingInnerPartition(importance!, c.expertSize ?? h / E) };
    case 'sharing-inter': {
      const s = sharingInterPartition(importance!, h / E, c.residual * (h / E));
      groups = { experts: s.experts, residual: s.residual };
      break;
    }
  }
  checkPartition(groups.residual ? [...groups.experts, ...chunk(groups.residual, h / E)] : groups.experts, h);
  return groups;
}

const chunk = (xs: number[], n: number) => Array.from({ length: xs.length / n }, (_, i) => xs.slice(i * n, (i + 1) * n));

function activationsOf(seed: UpcycleSource, l: number, ffn: DenseFFNConfig, rows: Float32Array[]): Float32Array {
  const p = layerPrefix(l);
  return hiddenActivations(rows, seed.weights.get(`${p}.ffn.w1.weight`)!, ffn.glu ? seed.weights.get(`${p}.ffn.w3.weight`) : undefined, ffn.activation);
}

/**
 * LLaMA-MoE's neuron importance per data cluster: v_ej = mean over cluster e's tokens of |a_tj · ∂ℓ/∂a_tj|.
 * Clusters: the domain sample lists when given (one per routed expert), else the calibration sequences
 * grouped by k-means of their mean first-layer FFN input.
 */
function neuronImportance(
  tools: UpcycleTools,
  seed: UpcycleSource,
  input: UpcycleInput,
  calibration: Int32Array[],
  ffns: Map<number, DenseFFNConfig>,
  clusters: number,
  maxTokens: number,
): Map<number, Float64Array[]> {
  const layers = [...ffns.keys()];
  const lists = input.domainSamples?.length ? input.domainSamples : [calibration];
  const recs = lists.map((seqs) => ffnOutputGrads(tools.registry, seed, seqs, layers, maxTokens));
  let groups: { rec: (typeof recs)[number][number]; cluster: number }[];
  if (input.domainSamples?.length) groups = recs.flatMap((rs, e) => rs.map((rec) => ({ rec, cluster: e })));
  else {
    const feats = recs[0]!.map((r) => meanRow(r.inputs.get(layers[0]!)!));
    const assign = kMeans(feats, clusters);
    groups = recs[0]!.map((rec, i) => ({ rec, cluster: assign[i]! }));
  }
  const out = new Map<number, Float64Array[]>();
  for (const [l, ffn] of ffns) {
    const h = ffn.hidden;
    const w2 = seed.weights.get(`${layerPrefix(l)}.ffn.w2.weight`)!;
    const d = w2.shape[0]!;
    const v = Array.from({ length: clusters }, () => new Float64Array(h));
    const tokens = new Float64Array(clusters);
    for (const { rec, cluster } of groups) {
      const xs = rec.inputs.get(l)!;
      const gs = rec.grads.get(l)!;
      const a = activationsOf(seed, l, ffn, xs);
      xs.forEach((_, t) => {
        const g = gs[t]!;
        for (let j = 0; j < h; j++) {
          let dj = 0;
          for (let o = 0; o < d; o++) dj += g[o]! * w2.data[o * h + j]!;
          v[cluster]![j]! += Math.abs(a[t * h + j]! * dj);
        }
      });
      tokens[cluster]! += xs.length;
    }
    v.forEach((row, e) => {
      if (tokens[e] === 0)
        throw new MoelabError(
          `data cluster ${e} of ${clusters} got no calibration tokens; give more (or more varied) calibration sequences, or one sample list per routed expert (--domains)`,
          'sources.calibration',
        );
      for (let j = 0; j < h; j++) row[j]! /= tokens[e]!;
    });
    out.set(l, v);
  }
  return out;
}

function meanRow(rows: Float32Array[]): Float64Array {
  const m = new Float64Array(rows[0]!.length);
  for (const r of rows) for (let a = 0; a < m.length; a++) m[a]! += r[a]! / rows.length;
  const n = Math.hypot(...m) || 1;
  return m.map((x) => x / n);
}

/** Lloyd's k-means, deterministic (farthest-point initialisation from point 0), 20 iterations: the cluster of each point. */
function kMeans(points: Float64Array[], K: number): Int32Array {
  const dist = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + (x - b[i]!) ** 2, 0);
  const centres = [Float64Array.from(points[0]!)];
  while (centres.length < Math.min(K, points.length)) {
    let best = 0;
    let bestD = -1;
    points.forEach((p, i) => {
      const dmin = Math.min(...centres.map((c) => dist(p, c)));
      if (dmin > bestD) [best, bestD] = [i, dmin];
    });
    centres.push(Float64Array.from(points[best]!));
  }
  const assign = new Int32Array(points.length);
  for (let it = 0; it < 20; it++) {
    points.forEach((p, i) => {
      let bc = 0;
      centres.forEach((c, k) => {
        if (dist(p, c) < dist(p, centres[bc]!)) bc = k;
      });
      assign[i] = bc;
    });
    centres.forEach((c, k) => {
      const members = points.filter((_, i) => assign[i] === k);
      if (!members.length) return;
      c.fill(0);
      for (const m of members) for (let a = 0; a < c.length; a++) c[a]! += m[a]! / members.length;
    });
  }
  return assign;
}

/** W_a at the groups' centres (mean normalised W1 rows), W_b = I, then fitted to the groups' activation mass. */
function moeficationRouter(
  c: SplitConfig,
  seed: UpcycleSource,
  l: number,
  ffn: DenseFFNConfig,
  groups: Partition,
  rows: Float32Array[],
  acts: () => Float32Array,
  tools: UpcycleTools,
  weights: WeightMap,
  provenance: Map<string, ProvenanceEntry>,
): string[] {
  const p = layerPrefix(l);
  const E = groups.length;
  const w1 = normalisedRows(seed.weights.get(`${p}.ffn.w1.weight`)!);
  const d = w1[0]!.length;
  const wa = new Float64Array(E * d);
  groups.forEach((g, e) => {
    for (const j of g) for (let a = 0; a < d; a++) wa[e * d + a]! += w1[j]![a]! / g.length;
  });
  const wb = Float64Array.from({ length: E * E }, (_, i) => (i % (E + 1) === 0 ? 1 : 0));
  const from = [`${seed.name}:${p}.ffn.w1.weight`];
  if (c.routerFit.epochs === 0 || rows.length === 0) {
    weights.set(`${p}.ffn.router.wa`, { shape: [E, d], data: Float32Array.from(wa) });
    provenance.set(`${p}.ffn.router.wa`, { op: 'computed', from, note: 'centres of the groups (mean normalised W1 rows)' });
    provenance.set(`${p}.ffn.router.wb`, { op: 'new', from: [], note: 'identity' });
    return rows.length === 0 && c.routerFit.epochs > 0 ? [`layer ${l}: moefication-mlp router at the group centres (no calibration tokens to fit it on)`] : [];
  }
  const fit = fitSelectionRouter(rows, groupMass(acts(), rows.length, ffn.hidden, groups), wa, wb, {
    ...c.routerFit,
    k: c.k,
    seed: tools.seed,
    label: `${p}.ffn.router`,
  });
  const note = `fitted ${c.routerFit.epochs} epochs to the groups' activation mass on ${rows.length} calibration tokens (BCE, Adam lr ${c.routerFit.lr})`;
  weights.set(`${p}.ffn.router.wa`, { shape: [E, d], data: Float32Array.from(fit.wa) });
  weights.set(`${p}.ffn.router.wb`, { shape: [E, E], data: Float32Array.from(fit.wb) });
  provenance.set(`${p}.ffn.router.wa`, { op: 'computed', from, note: `group centres, ${note}` });
  provenance.set(`${p}.ffn.router.wb`, { op: 'computed', from, note: `identity, ${note}` });
  return [
    `layer ${l}: router top-${c.k} covers ${(100 * fit.coverageAfter).toFixed(1)}% of held-out activation mass after the fit (${(100 * fit.coverageBefore).toFixed(1)}% at the centres)`,
  ];
}

export const moeSplit = splitEntry(
  'moe-split',
  'Split every dense FFN into E groups of neurons (contiguous, random, balanced k-means, co-activation or LLaMA-MoE importance) with any router.',
  'docs/upcycling.md#splitting-an-ffn',
  'contiguous',
  (_E, k) => ({ type: 'moefication-mlp', k }),
);

export const moefication = splitEntry(
  'moefication',
  'MoEfication: FFN neurons grouped by balanced k-means (parameter clustering) or co-activation into experts; MLP selection router fitted on calibration tokens, weight 1.',
  'docs/upcycling.md#moefication; arXiv 2110.01786',
  'balanced-kmeans',
  (_E, k) => ({ type: 'moefication-mlp', k }),
);

export const llamaMoE = splitEntry(
  'llama-moe',
  'LLaMA-MoE: random, clustered or gradient-importance (optionally shared) neuron split into experts; noisy zero-initialised gate, softmax over the top-k, output × E/k.',
  'docs/upcycling.md#llama-moe; arXiv 2406.16554',
  'random',
  (E, k) => ({
    type: 'softmax-topk',
    k,
    renormalize: k > 1,
    noisy: true,
    initStd: 0,
    scale: E / k,
    balanceCoef: 0,
    zLossCoef: 0,
    importanceCoef: 0.01,
    loadCoef: 0.01,
  }),
);
