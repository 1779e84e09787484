/**
 * CMoE, carving a dense SwiGLU FFN into a shared expert and routed experts without training (Pei et al.,
 * arXiv 2502.04416; official code JarvisPei/CMoE), docs/upcycling.md#cmoe. Per layer, on calibration tokens:
 *
 *   a_tj = silu(x̂_t·ĝ_j) · (x̂_t·û_j)          x̂, ĝ_j, û_j: the L2-normalised FFN input and neuron j's gate / up rows
 *   M_tj = 1 if j is among the K_act largest |a_t·| (activation markers);   ρ_j = mean_t M_tj (activation rate)
 *   shared expert = the N_s·h/E neurons of highest ρ
 *   routed experts: centroids = the marker columns of the E − N_s remaining neurons of highest ρ; the remaining
 *     neurons are assigned to them, exactly h/E per expert, at least total L1 distance of marker columns
 *     (the reference's LAPJV; balancedAssignment: exact up to a few thousand neurons, greedy above);
 *     representative r_e = the member closest to its expert's updated centroid
 *   router cmoe-analytic: score_e = |(x·û_{r_e})·silu(x·ĝ_{r_e})|, weight 1 + γ_e·s_e, γ = 0
 *
 * With γ = 0 and every routed expert active the carved layer is the dense FFN (I11).
 */
import { Config, defineEntry, type Entry, MoelabError, type TSchema, Type } from '@moelab/core';
import { ffnInputs } from '../calibrate.js';
import type { ProvenanceEntry, UpcycleDraft, Upcycler } from '../contract.js';
import { denseAsExpert, type ExpertTensors, ffnParts, mlpExpertNode, writeExperts } from '../ffn.js';
import { denseFFN, layerPrefix, modelView, replaceInBlock, selectLayers, specWithBlocks } from '../model-view.js';
import { balancedAssignment, normalisedRows } from '../partition.js';
import { copyTensor, gatherColumns, gatherRows, type WeightMap } from '../weights.js';
import { layersSchema } from './sparse-upcycle.js';

const silu = (v: number) => v / (1 + Math.exp(-v));

export const cmoe: Entry<TSchema, Upcycler> = defineEntry({
  kind: 'upcycler',
  name: 'cmoe',
  description:
    'CMoE: carve each SwiGLU FFN into a shared expert (most active neurons) and balanced routed experts from calibration activations; analytical router.',
  reference: 'docs/upcycling.md#cmoe; arXiv 2502.04416',
  schema: Config({
    experts: Type.Integer({ minimum: 2, default: 16, description: 'E groups of h/E neurons (shared ones included)' }),
    shared: Type.Integer({ minimum: 0, default: 2, description: 'N_s groups form the shared expert' }),
    k: Type.Integer({ minimum: 1, default: 2, description: 'routed experts per token' }),
    markers: Type.Integer({ minimum: 1, default: 10, description: 'K_act: neurons marked per calibration token' }),
    maxTokens: Type.Integer({ minimum: 1, default: 4096, description: 'calibration tokens used per layer' }),
    layers: { ...layersSchema, default: 'all' },
  }),
  create: (c): Upcycler => ({
    run(input, tools): UpcycleDraft {
      const seed = input.seed;
      if (!seed) throw new MoelabError('cmoe carves one dense model: pass it as the seed', 'sources.seed');
      if (!input.calibration?.length) throw new MoelabError('cmoe needs calibration token sequences to measure neuron activations', 'sources.calibration');
      const view = modelView(tools.registry, seed.spec, `seed (${seed.name})`);
      const E = c.experts;
      const Er = E - c.shared;
      if (Er < 1) throw new MoelabError(`shared ${c.shared} leaves no routed expert of ${E}`, 'upcycler.shared');
      if (c.k > Er) throw new MoelabError(`k = ${c.k} exceeds the ${Er} routed experts`, 'upcycler.k');
      const chosen = selectLayers(c.layers as 'all' | 'every-other' | number[], view.layers.length, 'upcycler');
      const inputs = tools.moments ? new Map<number, Float32Array[]>() : ffnInputs(tools.registry, seed, input.calibration, chosen, c.maxTokens);
      const weights: WeightMap = new Map();
      const provenance = new Map<string, ProvenanceEntry>();
      const set = new Set(chosen);
      const blocks = view.layers.map((layer) => {
        if (!set.has(layer.index)) return layer.blockNode;
        const ffn = denseFFN(layer, `seed (${seed.name})`);
        if (!ffn.glu)
          throw new MoelabError(`cmoe carves gated (SwiGLU) FFNs; layer ${layer.index}'s is not (glu: false)`, `seed (${seed.name}): layer ${layer.index} ffn`);
        const h = ffn.hidden;
        if (h % E !== 0) throw new MoelabError(`${E} experts do not divide the FFN's ${h} neurons`, 'upcycler.experts');
        const size = h / E;
        const p = layerPrefix(layer.index);
        const g = normalisedRows(seed.weights.get(`${p}.ffn.w1.weight`)!);
        const u = normalisedRows(seed.weights.get(`${p}.ffn.w3.weight`)!);
        const X = inputs.get(layer.index) ?? [];
        const N = X.length;
        // Markers: per token the K_act neurons of largest |a|.
        const marks: Uint8Array[] = Array.from({ length: h }, () => new Uint8Array(N));
        const rate = new Float64Array(h);
        const Kact = Math.min(c.markers, h);
        X.forEach((x, t) => {
          const n = Math.hypot(...x) || 1;
          const a = g.map((gj, j) => {
            let sg = 0;
            let su = 0;
            for (let i = 0; i < x.length; i++) {
              sg += (x[i]! / n) * gj[i]!;
              su += (x[i]! / n) * u[j]![i]!;
            }
            return [Math.abs(silu(sg) * su), j] as const;
          });
          a.sort((p1, p2) => p2[0] - p1[0] || p1[1] - p2[1]);
          for (let r = 0; r < Kact; r++) {
            marks[a[r]![1]]![t] = 1;
            rate[a[r]![1]]! += 1 / Math.max(1, N);
          }
        });
        const byRate = Array.from({ length: h }, (_, j) => j).sort((i, j) => rate[j]! - rate[i]! || i - j);
        const sharedIdx = byRate.slice(0, c.shared * size).sort((a, b) => a - b);
        const rest = byRate.slice(c.shared * size);
        const centroids = rest.slice(0, Er).map((j) => Float64Array.from(marks[j]!));
        const l1 = (m: Uint8Array, cvec: Float64Array) => {
          let s = 0;
          for (let t = 0; t < N; t++) s += Math.abs(m[t]! - cvec[t]!);
          return s;
        };
        const cost = new Float64Array(rest.length * Er);
        rest.forEach((j, i) => {
          for (let e = 0; e < Er; e++) cost[i * Er + e] = l1(marks[j]!, centroids[e]!);
        });
        const assigned = balancedAssignment(cost, rest.length, Er);
        const owner = new Map<number, number>(rest.map((j, i) => [j, assigned[i]!]));
        const groups: number[][] = Array.from({ length: Er }, () => []);
        for (const [j, e] of owner) groups[e]!.push(j);
        for (const gr of groups) gr.sort((a, b) => a - b);
        const reps = groups.map((gr) => {
          const centre = new Float64Array(N);
          for (const j of gr) for (let t = 0; t < N; t++) centre[t]! += marks[j]![t]! / gr.length;
          return gr.reduce((best, j) => (l1(marks[j]!, centre) < l1(marks[best]!, centre) ? j : best), gr[0]!);
        });
        const dense = denseAsExpert(seed, layer.index, true);
        const slice = (idx: number[]): ExpertTensors => {
          const out: ExpertTensors = { parts: {}, from: dense.from };
          for (const part of ffnParts(true)) out.parts[part] = part === 'w2' ? gatherRows(dense.parts[part]!, idx) : gatherColumns(dense.parts[part]!, idx);
          return out;
        };
        writeExperts(weights, provenance, `${p}.ffn.experts`, groups.map(slice), true, `${Er} balanced groups of ${size} neurons by activation markers`);
        writeExperts(weights, provenance, `${p}.ffn.shared`, [slice(sharedIdx)], true, `the ${sharedIdx.length} most active neurons`);
        for (const part of ffnParts(true))
          for (const which of ['experts', 'shared'])
            provenance.set(`${p}.ffn.${which}.${part}`, { ...provenance.get(`${p}.ffn.${which}.${part}`)!, op: 'slice' });
        const d = view.dModel;
        for (const [name, rows, src] of [
          ['gate_rep', g, 'w1'],
          ['up_rep', u, 'w3'],
        ] as const) {
          const t = new Float32Array(Er * d);
          for (const [e, r] of reps.entries()) t.set(Float32Array.from(rows[r]!), e * d);
          weights.set(`${p}.ffn.router.${name}`, { shape: [Er, d], data: t });
          provenance.set(`${p}.ffn.router.${name}`, {
            op: 'computed',
            from: [`${seed.name}:${p}.ffn.${src}.weight`],
            note: 'normalised rows of the representative neurons',
          });
        }
        provenance.set(`${p}.ffn.router.gamma`, { op: 'new', from: [], note: 'γ = 0: weight exactly 1 at start' });
        return replaceInBlock(layer, {
          ffn: {
            type: 'moe',
            experts: Er,
            router: { type: 'cmoe-analytic', k: c.k },
            expert: mlpExpertNode(ffn, size),
            shared: mlpExpertNode(ffn, c.shared * size),
            expertNames: groups.map((_, e) => `${seed.name}/group${e}`),
          },
        });
      });
      const converted = (n: string) => chosen.some((l) => n.startsWith(`${layerPrefix(l)}.ffn.`));
      for (const [n, t] of seed.weights) {
        if (converted(n)) continue;
        weights.set(n, copyTensor(t));
        provenance.set(n, { op: 'copy', from: [`${seed.name}:${n}`] });
      }
      const notes = [`shared expert: ${c.shared} of ${E} groups; ${Er} routed experts, ${c.k} per token; ${input.calibration.length} calibration sequences`];
      return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
    },
  }),
});
