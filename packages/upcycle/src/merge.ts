/**
 * What the merging upcyclers (BTX, BAM, Nexus) share: the checked list of sources, the average of every
 * tensor that is not an expert, and the warning when the averaged sources do not look related.
 */
import { MoelabError } from '@moelab/core';
import { checkCompatible, meanSpread } from './check.js';
import type { ProvenanceEntry, UpcycleInput, UpcycleSource, UpcycleTools } from './contract.js';
import { modelView, type ModelView } from './model-view.js';
import { averageTensors, type WeightMap } from './weights.js';

export interface MergeSources {
  seed?: UpcycleSource;
  domains: UpcycleSource[];
  /** The seed's (or first domain model's) view: the architecture every source shares. */
  view: ModelView;
}

/** Seed + domain models, checked to share one architecture, vocabulary and tensor shapes. */
export function mergeSources(input: UpcycleInput, tools: UpcycleTools, method: string, needSeed: boolean): MergeSources {
  const domains = input.experts ?? [];
  if (domains.length === 0) throw new MoelabError(`${method} merges dense models branched from a seed: give at least one (experts)`, 'sources.experts');
  if (needSeed && !input.seed) throw new MoelabError(`${method} needs the seed checkpoint the experts were branched from`, 'sources.seed');
  const all = [...(input.seed ? [{ role: 'seed', source: input.seed }] : []), ...domains.map((s, i) => ({ role: `experts[${i}]`, source: s }))];
  const names = new Set<string>();
  for (const { role, source } of all) {
    if (names.has(source.name)) throw new MoelabError(`two sources are called "${source.name}": give each a distinct name`, role);
    names.add(source.name);
  }
  checkCompatible(tools.registry, all);
  const first = all[0]!;
  return { seed: input.seed, domains, view: modelView(tools.registry, first.source.spec, `${first.role} (${first.source.name})`) };
}

/**
 * Every tensor of `names` averaged over `sources` (uniform λ unless `lambda` is given), with provenance;
 * warns when the sources' spread says they do not descend from one seed.
 */
export function averageInto(
  weights: WeightMap,
  provenance: Map<string, ProvenanceEntry>,
  sources: UpcycleSource[],
  names: string[],
  tools: UpcycleTools,
  opts: { lambda?: number[]; threshold?: number } = {},
): void {
  for (const n of names) {
    const ts = sources.map((s) => s.weights.get(n)!);
    weights.set(n, sources.length === 1 ? { shape: ts[0]!.shape.slice(), data: new Float32Array(ts[0]!.data) } : averageTensors(ts, opts.lambda, n));
    provenance.set(n, {
      op: sources.length === 1 ? 'copy' : opts.lambda ? 'weighted-average' : 'average',
      from: sources.map((s) => `${s.name}:${n}`),
      note: opts.lambda ? `λ = ${opts.lambda.map((l) => +l.toFixed(4)).join(', ')}` : undefined,
    });
  }
  const threshold = opts.threshold ?? 0.5;
  const spread = meanSpread(sources, names);
  if (spread > threshold)
    tools.warn(
      `the averaged sources (${sources.map((s) => s.name).join(', ')}) differ by ${spread.toFixed(2)} relative L2 on average (> ${threshold}): they do not look branched from one seed, so their average is probably meaningless`,
    );
}
