/**
 * Branch-Train-MiX (Sukhbaatar et al., arXiv 2403.07816; no official code), docs/upcycling.md#btx.
 * Dense models M_1..M_N branched from a seed M_0 and trained on one domain each are mixed into one MoE:
 *
 *   FFN experts:  f_i = FFN of source i, in source order (the seed first when it is an expert)
 *   every other tensor (attention, norms, embeddings, head):  θ = (1/N') Σ_i θ_i  over the averaged sources
 *   router W ~ N(0, 0.02²) new;   y = Σ_{i∈TopK} softmax_{TopK}(W x)_i · f_i(x)   (top-2, renormalised)
 *
 * Built from N identical copies of the seed, the averages return the seed's tensors (I13) and renormalised
 * weights sum to 1, so the MoE computes the seed's function exactly (I1). `split: C` cuts each source FFN
 * into C contiguous neuron chunks (the paper's "splitting experts": N·C experts of h/C neurons).
 */
import { Config, defineEntry, type Entry, MoelabError, Node, type TSchema, Type } from '@moelab/core';
import type { ProvenanceEntry, UpcycleDraft, Upcycler } from '../contract.js';
import { denseAsExpert, type ExpertTensors, ffnParts, markRouterNew, mlpExpertNode, routerWithInit, writeExperts } from '../ffn.js';
import { averageInto, mergeSources } from '../merge.js';
import { denseFFN, layerPrefix, replaceInBlock, selectLayers, specWithBlocks } from '../model-view.js';
import { gatherColumns, gatherRows, type WeightMap } from '../weights.js';
import { layersSchema, routerInitSchema } from './sparse-upcycle.js';

/** Chunk `c` of `C` of an expert's neurons (contiguous). */
export function chunkExpert(x: ExpertTensors, c: number, C: number, glu: boolean): ExpertTensors {
  const h = x.parts.w1!.shape[1]!;
  const size = h / C;
  const idx = Array.from({ length: size }, (_, j) => c * size + j);
  const out: ExpertTensors = { parts: {}, from: x.from };
  for (const p of ffnParts(glu)) out.parts[p] = p === 'w2' ? gatherRows(x.parts[p]!, idx) : gatherColumns(x.parts[p]!, idx);
  return out;
}

export const btx: Entry<TSchema, Upcycler> = defineEntry({
  kind: 'upcycler',
  name: 'btx',
  description: 'Branch-Train-MiX: FFNs of the seed and its domain-trained copies become experts; everything else is averaged; new top-2 router.',
  reference: 'docs/upcycling.md#btx; arXiv 2403.07816',
  schema: Config({
    includeSeedAsExpert: Type.Boolean({ default: true, description: 'the seed FFN is expert 0 (the paper: 3 domains + the seed = 4 experts)' }),
    averageIncludesSeed: Type.Boolean({ default: true, description: 'the seed enters the average of the non-expert tensors' }),
    router: Node('router', {
      default: { type: 'softmax-topk', k: 2, renormalize: true, balanceCoef: 0.01, zLossCoef: 0 },
      description: 'router of the MoE layers',
    }),
    routerInit: routerInitSchema,
    split: Type.Integer({ minimum: 1, default: 1, description: 'C: neuron chunks per source FFN (N·C experts of h/C neurons)' }),
    layers: { ...layersSchema, default: 'all' },
    capacityFactor: Type.Number({ minimum: 0, default: 0 }),
    relatedThreshold: Type.Number({ minimum: 0, default: 0.5, description: 'warn when the averaged sources differ by more than this mean relative L2' }),
  }),
  create: (c): Upcycler => ({
    carriesOptimizer: true,
    run(input, tools): UpcycleDraft {
      const needSeed = c.includeSeedAsExpert || c.averageIncludesSeed;
      const { seed, domains, view } = mergeSources(input, tools, 'btx', needSeed);
      const expertSources = c.includeSeedAsExpert && seed ? [seed, ...domains] : domains;
      const averaged = c.averageIncludesSeed && seed ? [seed, ...domains] : domains;
      const chosen = new Set(selectLayers(c.layers as 'all' | 'every-other' | number[], view.layers.length, 'upcycler'));
      const router = routerWithInit(tools.registry, c.router, c.routerInit.std);
      const weights: WeightMap = new Map();
      const provenance = new Map<string, ProvenanceEntry>();
      const C = c.split;
      const blocks = view.layers.map((layer) => {
        if (!chosen.has(layer.index)) return layer.blockNode;
        const ffn = denseFFN(layer, `seed (${expertSources[0]!.name})`);
        if (ffn.hidden % C !== 0) throw new MoelabError(`split ${C} does not divide the FFN's ${ffn.hidden} neurons`, 'upcycler.split');
        const experts: ExpertTensors[] = [];
        const names: string[] = [];
        for (const s of expertSources) {
          const x = denseAsExpert(s, layer.index, ffn.glu);
          for (let k = 0; k < C; k++) {
            experts.push(C === 1 ? x : chunkExpert(x, k, C, ffn.glu));
            names.push(C === 1 ? s.name : `${s.name}/${k}`);
          }
        }
        const note = C === 1 ? 'FFN of each source, transposed to [in, out]' : `each source FFN cut into ${C} chunks of ${ffn.hidden / C} neurons`;
        writeExperts(weights, provenance, `${layerPrefix(layer.index)}.ffn.experts`, experts, ffn.glu, note);
        markRouterNew(provenance, layerPrefix(layer.index), router);
        const k = (router as { k?: number }).k;
        if (typeof k === 'number' && k > experts.length)
          throw new MoelabError(`router k = ${k} exceeds the ${experts.length} experts of the merge`, 'upcycler.router.k');
        return replaceInBlock(layer, {
          ffn: {
            type: 'moe',
            experts: experts.length,
            capacityFactor: c.capacityFactor,
            router,
            expert: mlpExpertNode(ffn, ffn.hidden / C),
            expertNames: names,
          },
        });
      });
      const converted = (n: string) => [...chosen].some((l) => n.startsWith(`${layerPrefix(l)}.ffn.`));
      const rest = [...averaged[0]!.weights.keys()].filter((n) => !converted(n));
      averageInto(weights, provenance, averaged, rest, tools, { threshold: c.relatedThreshold });
      const notes = [
        `experts per MoE layer: ${expertSources.map((s) => s.name).join(', ')}${C > 1 ? ` (each in ${C} chunks)` : ''}`,
        `averaged over ${averaged.map((s) => s.name).join(', ')}: attention, norms, embeddings, head`,
      ];
      return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
    },
  }),
});
