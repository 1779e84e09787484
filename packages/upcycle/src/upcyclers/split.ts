/**
 * Splitting a dense FFN into experts (docs/upcycling.md#splitting-an-ffn): the parameter count stays the
 * same; the h neurons of each FFN are partitioned into E groups of h/E, group e becomes expert e
 * (sliceNeurons: columns of W1/W3, rows of W2), and a router picks k groups per token. For any partition
 *
 *   Σ_{e=1..E} f_e(x) = FFN(x)      (every neuron's contribution is separable; I11)
 *
 * so with every expert active and weight 1 the MoE reproduces the dense FFN exactly.
 *
 *   moefication (arXiv 2110.01786; thunlp/MoEfication): balanced k-means of the neurons' first-layer weight
 *     rows (parameter clustering); router `moefication-mlp` initialised at the groups' centres, weight 1.
 *   llama-moe (arXiv 2406.16554; pjlab-sys4nlp/llama-moe): random split; noisy linear gate, zero-initialised,
 *     softmax over the k selected, output scaled by E/k (the released continual pre-training runs).
 *   moe-split: the generic form (any partition, any router).
 */
import { Config, defineEntry, type Entry, MoelabError, Node, type NodeSpec, type TSchema, Type } from '@moelab/core';
import type { ProvenanceEntry, UpcycleDraft, Upcycler } from '../contract.js';
import { denseAsExpert, type ExpertTensors, ffnParts, mlpExpertNode, writeExperts } from '../ffn.js';
import { denseFFN, layerPrefix, modelView, replaceInBlock, selectLayers, specWithBlocks } from '../model-view.js';
import { balancedKMeans, checkPartition, contiguousPartition, normalisedRows, type Partition, randomPartition } from '../partition.js';
import { copyTensor, gatherColumns, gatherRows, type WeightMap } from '../weights.js';
import { layersSchema } from './sparse-upcycle.js';

type PartitionKind = 'contiguous' | 'random' | 'balanced-kmeans';

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
      experts: Type.Integer({ minimum: 1, default: 8, description: 'E groups of h/E neurons per FFN' }),
      k: Type.Integer({ minimum: 1, default: 2, description: 'groups computed per token' }),
      partition: Type.Union([Type.Literal('contiguous'), Type.Literal('random'), Type.Literal('balanced-kmeans')], { default: partition }),
      kmeansOn: Type.Union([Type.Literal('w1'), Type.Literal('w3')], {
        default: 'w1',
        description: 'balanced-kmeans: which first-layer weight the neurons are clustered by',
      }),
      maxIter: Type.Integer({ minimum: 1, default: 20, description: 'balanced-kmeans iterations' }),
      router: Type.Optional(Node('router', { description: 'router (default: the method’s)' })),
      layers: { ...layersSchema, default: 'all' },
    }),
    create: (c): Upcycler => ({
      carriesOptimizer: false,
      run(input, tools): UpcycleDraft {
        const seed = input.seed;
        if (!seed) throw new MoelabError(`${name} splits one dense model: pass it as the seed`, 'sources.seed');
        if (input.experts?.length) throw new MoelabError(`${name} splits one dense model; it takes no experts`, 'sources.experts');
        const view = modelView(tools.registry, seed.spec, `seed (${seed.name})`);
        const E = c.experts;
        if (c.k > E) throw new MoelabError(`k = ${c.k} exceeds the ${E} experts`, 'upcycler.k');
        const router = c.router ?? defaultRouter(E, c.k);
        const chosen = new Set(selectLayers(c.layers as 'all' | 'every-other' | number[], view.layers.length, 'upcycler'));
        const weights: WeightMap = new Map();
        const provenance = new Map<string, ProvenanceEntry>();
        const blocks = view.layers.map((layer) => {
          if (!chosen.has(layer.index)) return layer.blockNode;
          const ffn = denseFFN(layer, `seed (${seed.name})`);
          if (ffn.hidden % E !== 0) throw new MoelabError(`${E} experts do not divide the FFN's ${ffn.hidden} neurons`, 'upcycler.experts');
          const p = layerPrefix(layer.index);
          const label = `${p}.ffn`;
          const src = seed.weights.get(`${p}.ffn.${c.kmeansOn}.weight`);
          if (!src) throw new MoelabError(`the FFN has no ${c.kmeansOn} (kmeansOn: "w3" needs a GLU FFN)`, 'upcycler.kmeansOn');
          let groups: Partition;
          if (c.partition === 'contiguous') groups = contiguousPartition(ffn.hidden, E);
          else if (c.partition === 'random') groups = randomPartition(ffn.hidden, E, tools.seed, label);
          else groups = balancedKMeans(normalisedRows(src), E, tools.seed, label, c.maxIter);
          checkPartition(groups, ffn.hidden);
          const dense = denseAsExpert(seed, layer.index, ffn.glu);
          const experts: ExpertTensors[] = groups.map((idx) => {
            const out: ExpertTensors = { parts: {}, from: dense.from };
            for (const part of ffnParts(ffn.glu))
              out.parts[part] = part === 'w2' ? gatherRows(dense.parts[part]!, idx) : gatherColumns(dense.parts[part]!, idx);
            return out;
          });
          writeExperts(weights, provenance, `${p}.ffn.experts`, experts, ffn.glu, `${c.partition} partition into ${E} groups of ${ffn.hidden / E} neurons`);
          for (const part of ffnParts(ffn.glu)) provenance.set(`${p}.ffn.experts.${part}`, { ...provenance.get(`${p}.ffn.experts.${part}`)!, op: 'slice' });
          const rtype = typeof router === 'string' ? router : router.type;
          if (rtype === 'moefication-mlp') {
            // W_a = the groups' centres: the mean of their L2-normalised first-layer rows.
            const rows = normalisedRows(seed.weights.get(`${p}.ffn.w1.weight`)!);
            const d = view.dModel;
            const wa = new Float32Array(E * d);
            groups.forEach((g, e) => {
              for (const j of g) for (let a = 0; a < d; a++) wa[e * d + a]! += rows[j]![a]! / g.length;
            });
            weights.set(`${p}.ffn.router.wa`, { shape: [E, d], data: wa });
            provenance.set(`${p}.ffn.router.wa`, {
              op: 'computed',
              from: [`${seed.name}:${p}.ffn.w1.weight`],
              note: 'centres of the groups (mean normalised W1 rows)',
            });
            provenance.set(`${p}.ffn.router.wb`, { op: 'new', from: [], note: 'identity' });
          } else provenance.set(`${p}.ffn.router.weight`, { op: 'new', from: [], note: `${rtype} router, its init` });
          return replaceInBlock(layer, {
            ffn: { type: 'moe', experts: E, router, expert: mlpExpertNode(ffn, ffn.hidden / E), expertNames: groups.map((_, e) => `${seed.name}/group${e}`) },
          });
        });
        const converted = (n: string) => [...chosen].some((l) => n.startsWith(`${layerPrefix(l)}.ffn.`));
        for (const [n, t] of seed.weights) {
          if (converted(n)) continue;
          weights.set(n, copyTensor(t));
          provenance.set(n, { op: 'copy', from: [`${seed.name}:${n}`] });
        }
        const notes = [
          `${E} experts of ${c.partition} neuron groups per FFN, ${c.k} per token; with all ${E} active and weight 1 the dense FFN is reproduced exactly`,
        ];
        return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
      },
    }),
  });
}

export const moeSplit = splitEntry(
  'moe-split',
  'Split every dense FFN into E groups of neurons (contiguous, random or balanced k-means) with any router; same parameter count.',
  'docs/upcycling.md#splitting-an-ffn',
  'contiguous',
  (_E, k) => ({ type: 'moefication-mlp', k }),
);

export const moefication = splitEntry(
  'moefication',
  'MoEfication: balanced k-means of the FFN neurons (parameter clustering) into experts; MLP selection router at the group centres, weight 1.',
  'docs/upcycling.md#moefication; arXiv 2110.01786',
  'balanced-kmeans',
  (_E, k) => ({ type: 'moefication-mlp', k }),
);

export const llamaMoE = splitEntry(
  'llama-moe',
  'LLaMA-MoE: random neuron split into experts; noisy zero-initialised linear gate, softmax over the top-k, output × E/k.',
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
