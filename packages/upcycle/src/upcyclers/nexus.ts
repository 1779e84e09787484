/**
 * Nexus (Gritsch et al., arXiv 2408.15901; no official code), docs/upcycling.md#nexus. From a seed and n
 * dense models branched from it:
 *
 *   shared expert  = the seed's FFN (always on);   routed expert i = domain model i's FFN
 *   every other tensor:  φ = (1/n) Σ_i φ_i  over the domain models (the seed too with averageIncludesSeed)
 *   router: nexus-projection — s = softmax(x · SwiGLU(d_i W1) W2), top-1, raw weight, D = the domain embeddings
 *   y = FFN_shared(x) + s_{i*} · FFN_{i*}(x)
 *
 * From identical copies y = (1 + s_top) · FFN(x): a Nexus merge never reproduces its seed exactly (I10b).
 * `nexus-linear` is the paper's baseline: the same shared expert and merge with a plain linear router.
 *
 * `nexus-extend` adds a dense expert trained later from the same seed to a trained Nexus model without
 * retraining the others: its FFN is appended to the routed experts, its domain embedding to D (the trained
 * projection places it: no new router parameters), every non-FFN tensor becomes
 * φ = (1 − λ) φ_moe + λ φ_new with λ = 1/(n+1) — the running mean, as if the new model had been in the
 * original average (I10d). With centred embeddings (`center: true`) the new domain's embedding is centred by
 * the stored centre of the initial domains, so the existing rows of D do not move. A linear router cannot place a new expert: it is re-initialised (the paper's baseline).
 */
import { Config, defineEntry, type Entry, MoelabError, type NodeSpec, type TSchema, Type } from '@moelab/core';
import type { ProvenanceEntry, UpcycleDraft, UpcycleInput, UpcycleSource, UpcycleTools, Upcycler } from '../contract.js';
import { hashedNgramEmbeddings, seedMeanEmbeddings } from '../embed.js';
import { denseAsExpert, ffnParts, markRouterNew, mlpExpertNode, routerWithInit, writeExperts } from '../ffn.js';
import { averageInto, mergeSources } from '../merge.js';
import { denseFFN, layerPrefix, modelView, replaceInBlock, specWithBlocks } from '../model-view.js';
import { averageTensors, sameShape, stackTensors, unstack, type WeightMap, type WeightTensor } from '../weights.js';
import { routerInitSchema } from './sparse-upcycle.js';

const embedderSchema = Type.Union([Type.Literal('seed-mean'), Type.Literal('hashed-ngrams')], {
  default: 'seed-mean',
  description: 'how domain embeddings are computed from domainSamples when none are provided',
});

/**
 * Centring (docs/upcycling.md#domain-embeddings): μ̄ = mean_i d_i over the initial domains, d_i ← (d_i − μ̄)/‖d_i − μ̄‖.
 * Raw domain means of small models are nearly collinear (cosines above 0.9); centring spreads them apart.
 */
export function centreEmbeddings(vectors: Float32Array[]): { centred: Float32Array[]; centre: Float64Array } {
  const m = vectors[0]!.length;
  const centre = new Float64Array(m);
  for (const v of vectors) for (let a = 0; a < m; a++) centre[a]! += v[a]! / vectors.length;
  return { centred: vectors.map((v) => centred(v, centre)), centre };
}

/** (v − μ̄)/‖v − μ̄‖ (zero stays zero). */
export function centred(v: Float32Array, centre: ArrayLike<number>): Float32Array {
  const out = Float64Array.from(v, (x, a) => x - centre[a]!);
  const n = Math.hypot(...out) || 1;
  return Float32Array.from(out, (x) => x / n);
}

/** One domain embedding per expert: provided, or computed from the domains' samples. */
function domainEmbeddings(
  input: UpcycleInput,
  tools: UpcycleTools,
  count: number,
  embedder: 'seed-mean' | 'hashed-ngrams',
  buckets: number,
  seed: UpcycleSource | undefined,
  method: string,
): { vectors: Float32Array[]; how: string } {
  if (input.domainEmbeddings) {
    const v = input.domainEmbeddings;
    if (v.length !== count) throw new MoelabError(`${v.length} domain embeddings for ${count} experts: give one per expert`, 'sources.domainEmbeddings');
    const m = v[0]!.length;
    v.forEach((e, i) => {
      if (e.length !== m)
        throw new MoelabError(`embedding ${i} has length ${e.length}, embedding 0 has ${m}: all must share one length`, `sources.domainEmbeddings[${i}]`);
    });
    return { vectors: v.map((e) => Float32Array.from(e)), how: 'provided' };
  }
  const samples = input.domainSamples;
  if (!samples)
    throw new MoelabError(`${method} needs domain embeddings: pass domainEmbeddings, or domainSamples (token sequences of each expert's domain)`, 'sources');
  if (samples.length !== count) throw new MoelabError(`${samples.length} sample lists for ${count} experts: give one per expert`, 'sources.domainSamples');
  if (tools.moments) return { vectors: samples.map(() => new Float32Array(embedder === 'seed-mean' ? 1 : buckets)), how: embedder };
  if (embedder === 'hashed-ngrams') return { vectors: hashedNgramEmbeddings(samples, buckets), how: `hashed byte 3-5-grams, ${buckets} buckets` };
  if (!seed) throw new MoelabError(`the seed-mean embedder runs the seed model: pass the seed`, 'sources.seed');
  return { vectors: seedMeanEmbeddings(tools.registry, seed, samples), how: `seed-mean of ${seed.name}'s final hidden state` };
}

function nexusEntry(name: string, linear: boolean, description: string): Entry<TSchema, Upcycler> {
  return defineEntry({
    kind: 'upcycler',
    name,
    description,
    reference: 'docs/upcycling.md#nexus; arXiv 2408.15901',
    schema: Config({
      averageIncludesSeed: Type.Boolean({
        default: false,
        description: 'the seed enters the average of the non-FFN tensors (the paper averages the domain models)',
      }),
      embedder: embedderSchema,
      buckets: Type.Integer({ minimum: 1, default: 1024, description: 'hashed-ngrams: embedding length m' }),
      center: Type.Boolean({
        default: false,
        description: 'subtract the mean of the domain embeddings and re-normalise (kept in the router spec for nexus-extend); the paper does not centre',
      }),
      routerHidden: Type.Optional(Type.Integer({ minimum: 1, description: 'h_p of the projection (default dModel)' })),
      balanceCoef: Type.Number({ minimum: 0, default: 0.05, description: 'Switch balance loss of the routed experts (the paper: 0.05)' }),
      routerInit: routerInitSchema,
      capacityFactor: Type.Number({ minimum: 0, default: 0 }),
      relatedThreshold: Type.Number({ minimum: 0, default: 0.5 }),
    }),
    create: (c): Upcycler => ({
      carriesOptimizer: linear,
      run(input, tools): UpcycleDraft {
        const { seed, domains, view } = mergeSources(input, tools, name, true);
        const n = domains.length;
        const where = `seed (${seed!.name})`;
        const weights: WeightMap = new Map();
        const provenance = new Map<string, ProvenanceEntry>();
        let router: Exclude<NodeSpec, string>;
        let embeddings: WeightTensor | undefined;
        let how = '';
        if (linear) router = { type: 'softmax-topk', k: 1, renormalize: false, balanceCoef: c.balanceCoef, zLossCoef: 0, initStd: c.routerInit.std };
        else {
          const e = domainEmbeddings(input, tools, n, c.embedder, c.buckets, seed, name);
          const m = e.vectors[0]!.length;
          let vectors = e.vectors;
          let centre: Float64Array | undefined;
          how = e.how;
          if (c.center) {
            if (n < 2) throw new MoelabError('centring one domain embedding leaves nothing: center needs at least 2 domains', 'upcycler.center');
            ({ centred: vectors, centre } = centreEmbeddings(vectors));
            how += ', centred';
          }
          embeddings = stackTensors(vectors.map((v) => ({ shape: [m], data: v })));
          router = { type: 'nexus-projection', k: 1, embeddingDim: m, balanceCoef: c.balanceCoef };
          if (c.routerHidden !== undefined) router.hidden = c.routerHidden;
          if (centre) router.domainCentre = Array.from(centre, (x) => Math.fround(x));
        }
        const expertNames = domains.map((s) => s.name);
        const blocks = view.layers.map((layer) => {
          const p = layerPrefix(layer.index);
          const ffn = denseFFN(layer, where);
          writeExperts(
            weights,
            provenance,
            `${p}.ffn.experts`,
            domains.map((s) => denseAsExpert(s, layer.index, ffn.glu)),
            ffn.glu,
            'FFN of each domain model, transposed to [in, out]',
          );
          writeExperts(weights, provenance, `${p}.ffn.shared`, [denseAsExpert(seed!, layer.index, ffn.glu)], ffn.glu, 'shared expert = the seed FFN');
          if (embeddings) {
            weights.set(`${p}.ffn.router.domain_embeddings`, embeddings);
            provenance.set(`${p}.ffn.router.domain_embeddings`, { op: 'computed', from: domains.map((s) => `${s.name}:data`), note: how });
            provenance.set(`${p}.ffn.router.proj1`, { op: 'new', from: [], note: 'projection W1 ~ N(0, 1/m)' });
            provenance.set(`${p}.ffn.router.proj2`, { op: 'new', from: [], note: 'projection W2 ~ N(0, 0.02²)' });
          } else markRouterNew(provenance, p, router);
          return replaceInBlock(layer, {
            ffn: { type: 'moe', experts: n, capacityFactor: c.capacityFactor, router, expert: mlpExpertNode(ffn), shared: mlpExpertNode(ffn), expertNames },
          });
        });
        const averaged = c.averageIncludesSeed ? [seed!, ...domains] : domains;
        const rest = [...seed!.weights.keys()].filter((t) => !/^transformer\.layers\.\d+\.ffn\./.test(t));
        averageInto(weights, provenance, averaged, rest, tools, { threshold: c.relatedThreshold });
        const notes = [
          `shared expert: ${seed!.name}'s FFN; routed experts: ${expertNames.join(', ')}`,
          linear ? 'linear router (the Nexus paper’s baseline), top-1 raw' : `router: nexus-projection over domain embeddings (${how})`,
          'y = shared(x) + s_top · expert(x): the merge does not reproduce the seed exactly at step 0',
        ];
        return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
      },
    }),
  });
}

export const nexus = nexusEntry(
  'nexus',
  false,
  "Nexus: seed FFN as shared expert, domain models' FFNs as routed experts, adaptive router from domain embeddings.",
);
export const nexusLinear = nexusEntry('nexus-linear', true, "Nexus's baseline: the same merge and shared expert with a linear top-1 router.");

export const nexusExtend: Entry<TSchema, Upcycler> = defineEntry({
  kind: 'upcycler',
  name: 'nexus-extend',
  description: 'Add a dense expert trained later to a trained Nexus (or linear-router) MoE: append its FFN and domain embedding, λ-merge the rest.',
  reference: 'docs/upcycling.md#extending-nexus; arXiv 2408.15901 §3.3',
  schema: Config({
    lambda: Type.Optional(Type.Number({ minimum: 0, maximum: 1, description: 'weight of the new model in the non-FFN merge (default 1/(n+1))' })),
    embedder: embedderSchema,
    buckets: Type.Integer({ minimum: 1, default: 1024 }),
    routerInit: routerInitSchema,
  }),
  create: (c): Upcycler => ({
    run(input, tools): UpcycleDraft {
      const base = input.base;
      if (!base) throw new MoelabError('nexus-extend needs the trained MoE to extend (base)', 'sources.base');
      const fresh = input.experts ?? [];
      if (fresh.length !== 1) throw new MoelabError(`nexus-extend adds one dense expert at a time (got ${fresh.length})`, 'sources.experts');
      const added = fresh[0]!;
      const view = modelView(tools.registry, base.spec, `base (${base.name})`);
      const newView = modelView(tools.registry, added.spec, `experts[0] (${added.name})`);
      if (newView.layers.length !== view.layers.length || newView.dModel !== view.dModel || newView.vocabSize !== view.vocabSize)
        throw new MoelabError(
          `the new expert (d ${newView.dModel}, ${newView.layers.length} layers, vocabulary ${newView.vocabSize}) does not match the base MoE (d ${view.dModel}, ${view.layers.length} layers, vocabulary ${view.vocabSize})`,
          `experts[0] (${added.name})`,
        );
      const weights: WeightMap = new Map();
      const provenance = new Map<string, ProvenanceEntry>();
      let n = 0;
      let newEmbedding: Float32Array | undefined;
      let centredNew = false;
      const blocks = view.layers.map((layer) => {
        const p = layerPrefix(layer.index);
        if (layer.ffnType !== 'moe')
          throw new MoelabError(`layer ${layer.index}'s FFN is "${layer.ffnType}", not an MoE to extend`, `base (${base.name}): layer ${layer.index}`);
        const moe = layer.ffn as { experts: number; expert: NodeSpec; shared?: NodeSpec; router: NodeSpec; expertNames?: string[] };
        n = moe.experts;
        const ffn = denseFFN(newView.layers[layer.index]!, `experts[0] (${added.name})`);
        const x = denseAsExpert(added, layer.index, ffn.glu);
        for (const part of ffnParts(ffn.glu)) {
          const name = `${p}.ffn.experts.${part}`;
          const old = base.weights.get(name);
          if (!old) throw new MoelabError(`tensor "${name}" is missing (the base's experts must be an mlp bank)`, `base (${base.name})`);
          if (!sameShape(old.shape.slice(1), x.parts[part]!.shape))
            throw new MoelabError(
              `the new expert's ${part} is ${JSON.stringify(x.parts[part]!.shape)}, the base's experts are ${JSON.stringify(old.shape.slice(1))}`,
              `experts[0] (${added.name})`,
            );
          weights.set(name, stackTensors([...Array.from({ length: n }, (_, e) => unstack(old, e)), x.parts[part]!], name));
          provenance.set(name, { op: 'stack', from: [`${base.name}:${name}`, x.from[part]!], note: `${n} experts of the base + the new one` });
        }
        for (const [t, w] of base.weights)
          if (t.startsWith(`${p}.ffn.shared.`)) {
            weights.set(t, w);
            provenance.set(t, { op: 'copy', from: [`${base.name}:${t}`] });
          }
        let router = (typeof moe.router === 'string' ? { type: moe.router } : structuredClone(moe.router)) as Exclude<NodeSpec, string>;
        if (router.type === 'nexus-projection') {
          const D = base.weights.get(`${p}.ffn.router.domain_embeddings`)!;
          if (!newEmbedding) {
            if (input.domainEmbeddings) {
              if (input.domainEmbeddings.length !== 1) throw new MoelabError('give the new expert’s domain embedding only', 'sources.domainEmbeddings');
              newEmbedding = Float32Array.from(input.domainEmbeddings[0]!);
            } else newEmbedding = domainEmbeddings(input, tools, 1, c.embedder, c.buckets, input.seed, 'nexus-extend').vectors[0]!;
            if (tools.moments) newEmbedding = new Float32Array(D.shape[1]!);
          }
          if (newEmbedding.length !== D.shape[1])
            throw new MoelabError(
              `the new domain embedding has length ${newEmbedding.length}, the base's have ${D.shape[1]}: use the same embedder`,
              'sources.domainEmbeddings',
            );
          const centre = (router as { domainCentre?: number[] }).domainCentre;
          if (centre && !tools.moments && !centredNew) {
            newEmbedding = centred(newEmbedding, centre);
            centredNew = true;
          }
          const grown = { shape: [n + 1, D.shape[1]!], data: new Float32Array((n + 1) * D.shape[1]!) };
          grown.data.set(D.data);
          grown.data.set(newEmbedding, n * D.shape[1]!);
          weights.set(`${p}.ffn.router.domain_embeddings`, grown);
          provenance.set(`${p}.ffn.router.domain_embeddings`, {
            op: 'computed',
            from: [`${base.name}:${p}.ffn.router.domain_embeddings`, `${added.name}:data`],
            note: centredNew ? 'the new domain appended, centred by the stored domainCentre' : 'the new domain appended',
          });
          for (const w of ['proj1', 'proj2']) {
            const t = `${p}.ffn.router.${w}`;
            weights.set(t, base.weights.get(t)!);
            provenance.set(t, { op: 'copy', from: [`${base.name}:${t}`], note: 'the trained projection places the new expert' });
          }
        } else {
          router = routerWithInit(tools.registry, router, c.routerInit.std) as Exclude<NodeSpec, string>;
          provenance.set(`${p}.ffn.router.weight`, { op: 'new', from: [], note: `${router.type} router re-initialised: it cannot place a new expert` });
        }
        const names = moe.expertNames ?? Array.from({ length: n }, (_, e) => `expert ${e}`);
        return replaceInBlock(layer, {
          ffn: { ...(layer.blockNode.ffn as Exclude<NodeSpec, string>), experts: n + 1, router, expertNames: [...names, added.name] },
        });
      });
      const lambda = c.lambda ?? 1 / (n + 1);
      for (const [t, w] of base.weights) {
        if (/^transformer\.layers\.\d+\.ffn\./.test(t)) continue;
        const u = added.weights.get(t);
        if (!u || !sameShape(u.shape, w.shape))
          throw new MoelabError(
            `tensor "${t}" of the base ${u ? `has shape ${JSON.stringify(w.shape)}, the new expert's ${JSON.stringify(u.shape)}` : 'is missing in the new expert'}`,
            `experts[0] (${added.name})`,
          );
        weights.set(t, averageTensors([w, u], [1 - lambda, lambda], t));
        provenance.set(t, {
          op: 'weighted-average',
          from: [`${base.name}:${t}`, `${added.name}:${t}`],
          note: `(1 − λ)·base + λ·new, λ = ${+lambda.toFixed(4)}`,
        });
      }
      const notes = [`expert ${n} = ${added.name}'s FFN; non-FFN tensors merged with λ = ${+lambda.toFixed(4)}`];
      return { spec: specWithBlocks(view.spec, blocks), weights, provenance, notes };
    },
  }),
});
