/**
 * BAM, Branch-Attend-Mix (Zhang et al., arXiv 2408.08274; no official code), docs/upcycling.md#bam.
 * BTX plus attention experts, from parallel-block dense models (the seed and its domain copies):
 *
 *   u = N(x);   y = x + Σ_j g_j(u) · MHA_j(u) + Σ_{i∈Top1} p_i(u) · FFN_i(u)
 *   g = softmax(u W_att)  (soft: every expert)      p = softmax(u W_ffn)  (top-1, raw weight)
 *
 *   attention expert j = source j's W_q, W_k, W_v, W_o (kv: "shared": one W_k, W_v per layer = their average)
 *   FFN expert j = source j's FFN;   norms, embeddings, head: averaged;   both routers new, N(0, 0.02²)
 *
 * From N identical sources the attention mixture equals the dense attention for any router (Σ_j g_j = 1,
 * I6 / I6b), but the block is x + Attn(u) + p_top · FFN(u) with the paper's raw top-1 FFN gate (I9b): BAM
 * starts above the seed's loss and recovers in training. The spec keeps that gate; `ffnRouter` can change it.
 */
import { Config, defineEntry, type Entry, MoelabError, Node, type NodeSpec, type TSchema, Type } from '@moelab/core';
import type { ProvenanceEntry, UpcycleDraft, UpcycleSource, Upcycler } from '../contract.js';
import { denseAsExpert, markRouterNew, mlpExpertNode, routerWithInit, writeExperts } from '../ffn.js';
import { averageInto, mergeSources } from '../merge.js';
import { denseFFN, type LayerView, layerPrefix, specWithBlocks, replaceInBlock } from '../model-view.js';
import { averageTensors, transpose2d, type WeightMap } from '../weights.js';
import { routerInitSchema } from './sparse-upcycle.js';

/** The bam-soft-moa node equivalent to a layer's `mha`, or an error naming what BAM's attention cannot express. */
function bamAttention(layer: LayerView, N: number, kv: 'experts' | 'shared', routerStd: number, where: string): Exclude<NodeSpec, string> {
  if (layer.attentionType !== 'mha')
    throw new MoelabError(
      `layer ${layer.index}'s attention is "${layer.attentionType}"; BAM turns dense "mha" attention into experts`,
      `${where}: layer ${layer.index} attention`,
    );
  const a = layer.attention as {
    heads: number;
    kvHeads?: number;
    headDim?: number;
    ropeDims?: number;
    ropeBase: number;
    ropeLayout?: string;
    bias: boolean;
    qkvBias?: boolean;
    qkNorm?: string;
  };
  const refuse = (what: string, field: string) => {
    throw new MoelabError(`BAM's attention experts have no ${what}; this layer's mha uses it`, `${where}: layer ${layer.index} attention.${field}`);
  };
  if (a.bias || a.qkvBias) refuse('biases', a.bias ? 'bias' : 'qkvBias');
  if (a.qkNorm && a.qkNorm !== 'none') refuse('q/k norms', 'qkNorm');
  if ((a.ropeLayout ?? 'half') !== 'half') refuse('interleaved RoPE', 'ropeLayout');
  const headDim = a.headDim;
  if (a.ropeDims !== undefined && a.ropeDims !== 0 && headDim !== undefined && a.ropeDims !== headDim) refuse('partial RoPE', 'ropeDims');
  const node: Exclude<NodeSpec, string> = {
    type: 'bam-soft-moa',
    experts: N,
    heads: a.heads,
    rope: a.ropeDims !== 0,
    ropeBase: a.ropeBase,
    kv,
    routerInit: { dist: 'normal', std: routerStd },
  };
  if (a.kvHeads !== undefined) node.kvHeads = a.kvHeads;
  if (headDim !== undefined) node.headDim = headDim;
  return node;
}

function bamEntry(name: string, kv: 'experts' | 'shared', description: string): Entry<TSchema, Upcycler> {
  return defineEntry({
    kind: 'upcycler',
    name,
    description,
    reference: 'docs/upcycling.md#bam; arXiv 2408.08274',
    schema: Config({
      includeSeedAsExpert: Type.Boolean({ default: true, description: 'the seed is expert 0 of every mixture (the paper: 3 domains + the seed)' }),
      ffnRouter: Node('router', {
        default: { type: 'softmax-topk', k: 1, renormalize: false, balanceCoef: 0.01, zLossCoef: 0.001 },
        description: 'FFN router (the paper: top-1, raw softmax weight, Switch balance + z-loss)',
      }),
      routerInit: routerInitSchema,
      capacityFactor: Type.Number({ minimum: 0, default: 0 }),
      relatedThreshold: Type.Number({ minimum: 0, default: 0.5 }),
    }),
    create: (c): Upcycler => ({
      carriesOptimizer: true,
      run(input, tools): UpcycleDraft {
        const { seed, domains, view } = mergeSources(input, tools, name, c.includeSeedAsExpert);
        const sources: UpcycleSource[] = c.includeSeedAsExpert && seed ? [seed, ...domains] : domains;
        const N = sources.length;
        const where = `seed (${sources[0]!.name})`;
        const weights: WeightMap = new Map();
        const provenance = new Map<string, ProvenanceEntry>();
        const router = routerWithInit(tools.registry, c.ffnRouter, c.routerInit.std);
        const expertNames = sources.map((s) => s.name);
        const blocks = view.layers.map((layer) => {
          if (layer.block.layout !== 'parallel')
            throw new MoelabError(
              `BAM mixes attention and FFN experts of parallel blocks (y = x + Attn(N x) + FFN(N x)); layer ${layer.index} is "${layer.block.layout}"`,
              `${where}: $.block.layout`,
            );
          const p = layerPrefix(layer.index);
          const ffn = denseFFN(layer, where);
          writeExperts(
            weights,
            provenance,
            `${p}.ffn.experts`,
            sources.map((s) => denseAsExpert(s, layer.index, ffn.glu)),
            ffn.glu,
            'FFN of each source, transposed to [in, out]',
          );
          markRouterNew(provenance, p, router);
          const attention = bamAttention(layer, N, kv, c.routerInit.std, where);
          const proj = (s: UpcycleSource, w: string) => {
            const n = `${p}.attention.${w}_proj.weight`;
            return { t: transpose2d(s.weights.get(n)!, n), from: `${s.name}:${n}` };
          };
          sources.forEach((s, j) => {
            for (const w of kv === 'experts' ? ['q', 'k', 'v', 'o'] : ['q', 'o']) {
              const { t, from } = proj(s, w);
              const n = `${p}.attention.experts.${j}.w${w}`;
              weights.set(n, t);
              provenance.set(n, { op: 'copy', from: [from], note: 'transposed to [in, out]' });
            }
          });
          if (kv === 'shared')
            for (const w of ['k', 'v']) {
              const parts = sources.map((s) => proj(s, w));
              const n = `${p}.attention.shared_kv.w${w}`;
              weights.set(
                n,
                averageTensors(
                  parts.map((x) => x.t),
                  undefined,
                  n,
                ),
              );
              provenance.set(n, { op: 'average', from: parts.map((x) => x.from), note: 'transposed to [in, out]' });
            }
          provenance.set(`${p}.attention.router.weight`, { op: 'new', from: [], note: `attention router, N(0, ${c.routerInit.std}²)` });
          return replaceInBlock(layer, {
            attention,
            ffn: { type: 'moe', experts: N, capacityFactor: c.capacityFactor, router, expert: mlpExpertNode(ffn), expertNames },
          });
        });
        const rest = [...sources[0]!.weights.keys()].filter((n) => !/^transformer\.layers\.\d+\.(ffn|attention)\./.test(n));
        averageInto(weights, provenance, sources, rest, tools, { threshold: c.relatedThreshold });
        const notes = [
          `attention and FFN experts per layer: ${expertNames.join(', ')}${kv === 'shared' ? ' (K/V shared: the average of the sources’)' : ''}`,
          'the FFN gate is the raw top-1 probability (≈ 1/N with a fresh router): the step-0 loss is above the seed’s and recovers in training',
        ];
        return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
      },
    }),
  });
}

export const bam = bamEntry('bam', 'experts', "BAM: the sources' attention modules become soft-routed attention experts and their FFNs top-1 FFN experts.");
export const bamKvShare = bamEntry(
  'bam-kvshare',
  'shared',
  'BAM with KV sharing: per-expert W_q / W_o, one averaged W_k / W_v per layer (one KV cache), top-1 FFN experts.',
);
