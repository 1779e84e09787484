/**
 * Sparse Upcycling (Komatsuzaki et al., arXiv 2212.05055; official code google-research/t5x
 * `t5x/contrib/moe`), docs/upcycling.md#sparse-upcycling. One dense checkpoint; in each selected layer
 *
 *   experts_e = FFN (e = 1..E, exact copies)      router W_r ~ N(0, 0.02²)      everything else copied
 *   y = Σ_{e∈S} w_e FFN_e(x)
 *
 * With weights that sum to 1 per token (renormalised top-k) the upcycled model computes exactly the dense
 * function at step 0 (invariant I1); with raw top-k weights (`sparse-upcycle-t5`) the FFN is scaled by
 * Σ_{e∈S} p_e < 1 (I2). Layers: "every-other" (flaxformer's MIXED layout: 0-based odd layers), "all" or
 * a list. Optional symmetry breaking (not in the official recipe, breaks I1): `gaussian` adds
 * N(0, (α·std W)²) per expert and tensor; `drop-upcycle` (arXiv 2502.19261) re-draws a fraction r of each
 * expert's neurons from N(mean W, std W²) of the original matrix. Optimizer carry-over (the vision
 * recipe): copied tensors keep their Adam moments, experts get copies, the router zeros.
 */
import { Config, defineEntry, type Entry, MoelabError, Node, type NodeSpec, Rng, type TSchema, Type } from '@moelab/core';
import type { ProvenanceEntry, UpcycleDraft, Upcycler } from '../contract.js';
import { denseAsExpert, type ExpertTensors, ffnParts, markRouterNew, mlpExpertNode, routerWithInit, writeExperts } from '../ffn.js';
import { denseFFN, layerPrefix, modelView, replaceInBlock, selectLayers, specWithBlocks } from '../model-view.js';
import { copyTensor, type WeightMap, type WeightTensor } from '../weights.js';

export const layersSchema = Type.Union([Type.Literal('all'), Type.Literal('every-other'), Type.Array(Type.Integer({ minimum: 0 }))], {
  description: 'which distinct layers become MoE layers: all, every-other (0-based odd layers), or a list of indices',
});

export const routerInitSchema = Type.Object(
  { dist: Type.Literal('normal', { default: 'normal' }), std: Type.Number({ minimum: 0, default: 0.02 }) },
  {
    additionalProperties: false,
    default: { dist: 'normal', std: 0.02 },
    description: 'router init (flaxformer default N(0, 0.02²)), for routers with an initStd option',
  },
);

const noiseSchema = Type.Object(
  {
    kind: Type.Union([Type.Literal('none'), Type.Literal('gaussian'), Type.Literal('drop-upcycle')], { default: 'none' }),
    alpha: Type.Number({ minimum: 0, default: 0.01, description: 'gaussian: noise std as a fraction of std(W)' }),
    rate: Type.Number({ minimum: 0, maximum: 1, default: 0.5, description: 'drop-upcycle: fraction of each expert’s neurons re-drawn' }),
  },
  { additionalProperties: false, default: { kind: 'none' }, description: 'symmetry breaking of the copies (breaks exact output preservation)' },
);

function stats(t: WeightTensor): { mean: number; std: number } {
  let s = 0;
  for (const v of t.data) s += v;
  const mean = s / t.data.length;
  let q = 0;
  for (const v of t.data) q += (v - mean) ** 2;
  return { mean, std: Math.sqrt(q / t.data.length) };
}

/** Noise on expert `e`'s copy (a fresh copy; the dense tensors stay untouched). */
function perturb(x: ExpertTensors, noise: { kind: string; alpha: number; rate: number }, rng: Rng, glu: boolean): ExpertTensors {
  if (noise.kind === 'none') return x;
  const out: ExpertTensors = { parts: {}, from: x.from };
  for (const p of ffnParts(glu)) out.parts[p] = copyTensor(x.parts[p]!);
  if (noise.kind === 'gaussian') {
    for (const p of ffnParts(glu)) {
      const t = out.parts[p]!;
      const { std } = stats(t);
      for (let i = 0; i < t.data.length; i++) t.data[i]! += noise.alpha * std * rng.normal();
    }
    return out;
  }
  // drop-upcycle: neuron j = column j of w1/w3 ([d, h]) and row j of w2 ([h, d]).
  const h = out.parts.w1!.shape[1]!;
  const d = out.parts.w1!.shape[0]!;
  const drop = Math.round(noise.rate * h);
  const perm = Array.from({ length: h }, (_, j) => j);
  for (let j = h - 1; j > 0; j--) {
    const r = rng.int(j + 1);
    [perm[j], perm[r]] = [perm[r]!, perm[j]!];
  }
  const chosen = perm.slice(0, drop);
  for (const p of ffnParts(glu)) {
    const t = out.parts[p]!;
    const { mean, std } = stats(x.parts[p]!);
    for (const j of chosen) {
      if (p === 'w2') for (let c = 0; c < d; c++) t.data[j * d + c] = mean + std * rng.normal();
      else for (let r = 0; r < d; r++) t.data[r * h + j] = mean + std * rng.normal();
    }
  }
  return out;
}

function sparseUpcycleEntry(name: string, description: string, router: NodeSpec): Entry<TSchema, Upcycler> {
  return defineEntry({
    kind: 'upcycler',
    name,
    description,
    reference: 'docs/upcycling.md#sparse-upcycling; arXiv 2212.05055',
    schema: Config({
      experts: Type.Integer({ minimum: 1, default: 8, description: 'E copies of the dense FFN per converted layer' }),
      layers: { ...layersSchema, default: 'every-other' },
      router: Node('router', { default: router, description: 'router of the MoE layers' }),
      routerInit: routerInitSchema,
      expertNoise: noiseSchema,
      capacityFactor: Type.Number({ minimum: 0, default: 0, description: 'capacity factor of the MoE layers (0 = dropless)' }),
      resumeOptimizerState: Type.Boolean({ default: false, description: 'carry the Adam moments and step of the dense checkpoint over' }),
    }),
    create: (c): Upcycler => ({
      carriesOptimizer: true,
      resumeOptimizerState: c.resumeOptimizerState,
      run(input, tools): UpcycleDraft {
        const seed = input.seed;
        if (!seed) throw new MoelabError(`${name} needs a dense seed checkpoint`, 'sources.seed');
        if (input.experts?.length)
          throw new MoelabError(`${name} copies one dense model; pass it as the seed (and --experts N for the number of copies)`, 'sources.experts');
        const view = modelView(tools.registry, seed.spec, `seed (${seed.name})`);
        const chosen = new Set(selectLayers(c.layers as 'all' | 'every-other' | number[], view.layers.length, 'upcycler'));
        const weights: WeightMap = new Map();
        const provenance = new Map<string, ProvenanceEntry>();
        const router = routerWithInit(tools.registry, c.router, c.routerInit.std);
        const blocks = view.layers.map((layer) => {
          if (!chosen.has(layer.index)) return layer.blockNode;
          const ffn = denseFFN(layer, `seed (${seed.name})`);
          const dense = denseAsExpert(seed, layer.index, ffn.glu);
          const experts = Array.from({ length: c.experts }, (_, e) =>
            tools.moments ? dense : perturb(dense, c.expertNoise, Rng.derive(tools.seed, 'upcycle-noise', layer.index, e), ffn.glu),
          );
          const note =
            c.expertNoise.kind === 'none'
              ? `${c.experts} copies of the dense FFN, transposed to [in, out]`
              : `${c.experts} copies + ${c.expertNoise.kind} noise`;
          writeExperts(weights, provenance, `${layerPrefix(layer.index)}.ffn.experts`, experts, ffn.glu, note);
          markRouterNew(provenance, layerPrefix(layer.index), router);
          return replaceInBlock(layer, {
            ffn: {
              type: 'moe',
              experts: c.experts,
              capacityFactor: c.capacityFactor,
              router,
              expert: mlpExpertNode(ffn),
              expertNames: Array.from({ length: c.experts }, (_, e) => `${seed.name}#${e}`),
            },
          });
        });
        // Everything that is not a converted FFN is copied.
        const converted = (n: string) => [...chosen].some((l) => n.startsWith(`${layerPrefix(l)}.ffn.`));
        for (const [n, t] of seed.weights) {
          if (converted(n)) continue;
          weights.set(n, copyTensor(t));
          provenance.set(n, { op: 'copy', from: [`${seed.name}:${n}`] });
        }
        const notes = [`layers ${[...chosen].join(', ')} -> ${c.experts} experts each`];
        if (c.expertNoise.kind !== 'none') notes.push(`${c.expertNoise.kind} noise on the copies: the step-0 output differs from the dense model`);
        return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
      },
    }),
  });
}

/** Output-preserving default: top-2 with renormalised weights (BTX's sparse-upcycling baseline). */
export const sparseUpcycle = sparseUpcycleEntry(
  'sparse-upcycle',
  'Sparse upcycling: every selected FFN becomes E identical copies + a new router (renormalised top-2: exact dense output at step 0).',
  { type: 'softmax-topk', k: 2, renormalize: true },
);

/** Paper-faithful T5 decoder setting: top-2 with raw (unnormalised) weights — the output drops at step 0. */
export const sparseUpcycleT5 = sparseUpcycleEntry(
  'sparse-upcycle-t5',
  'Sparse upcycling, T5 decoder setting: top-2 with raw softmax weights (the paper found normalising hurts language models).',
  { type: 'softmax-topk', k: 2, renormalize: false },
);
