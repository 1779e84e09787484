/**
 * A recipe's phases expanded into runs ("units"): one per domain of a `forEach` phase, one per upcycler
 * of a merge, one per baseline. Every unit names the units it needs (its dependencies); units whose
 * dependencies are finished can run at the same time.
 *
 * Matched baselines (steps decided once the reference pipeline has run):
 *   data     steps = Σ_{u ∈ P} tokens_u / tokensPerStep
 *   compute  steps = Σ_{u ∈ P} trainFlops_u / (flopsPerToken · tokensPerStep)
 * with P = the reference run and its ancestors, minus `from` and its ancestors (a scratch baseline has
 * no `from`: P is the whole pipeline of the reference). trainFlops = 3 × forward FLOPs per token × tokens.
 */
import { MoelabError, type TrainConfig } from '@moelab/core';
import { type MixtureSpec, parseMixture } from '../domains.js';
import { type BaselineRun, type Recipe, type UpcyclerRef, upcyclerLabel, upcyclerType } from './schema.js';

interface UnitBase {
  /** `phase` or `phase.run`: the run directory's name and how other phases refer to it. */
  id: string;
  phase: string;
  /** The run's name within its phase (domain, upcycler label or baseline name; the phase name for a single run). */
  run: string;
  deps: string[];
  /** Training config overrides of this run (recipe defaults, then the phase's). */
  train: Partial<TrainConfig>;
  data: MixtureSpec;
}

export type Unit =
  | (UnitBase & { kind: 'train'; from?: string; domain?: string })
  | (UnitBase & { kind: 'merge'; upcycler: UpcyclerRef; seed: string; experts: string[] })
  | (UnitBase & { kind: 'dense-continue'; from: string; reference?: string; match: BaselineRun['match'] })
  | (UnitBase & { kind: 'upcycle'; upcycler: UpcyclerRef; from: string; reference?: string; match: BaselineRun['match'] })
  | (UnitBase & { kind: 'scratch'; like: string; reference?: string; match: BaselineRun['match'] });

const TRAIN_KEYS = [
  'steps',
  'batchSize',
  'seqLen',
  'lr',
  'minLrRatio',
  'warmup',
  'weightDecay',
  'beta1',
  'beta2',
  'eps',
  'clip',
  'accumulate',
  'evalEvery',
  'evalBatches',
  'statsEvery',
  'seed',
] as const;

function trainOf(o: Record<string, unknown>): Partial<TrainConfig> {
  const out: Record<string, unknown> = {};
  for (const k of TRAIN_KEYS) if (o[k] !== undefined) out[k] = o[k];
  return out as Partial<TrainConfig>;
}

/** Expand the recipe into units, in recipe order. `domains`: the corpus's domain names. */
export function planRecipe(recipe: Recipe, domains: readonly string[]): Unit[] {
  const units: Unit[] = [];
  const byPhase = new Map<string, Unit[]>();
  const base = { ...trainOf(recipe.train), seed: recipe.train.seed ?? recipe.seed };
  const refs = (ref: string, where: string): string[] => {
    const [phase, sub] = ref.split('.');
    const list = byPhase.get(phase!);
    if (!list) throw new MoelabError(`no phase named "${phase}"`, where);
    if (sub === undefined || sub === '*') return list.map((u) => u.id);
    const u = list.find((x) => x.run === sub);
    if (!u) throw new MoelabError(`phase "${phase}" has no run "${sub}"; runs: ${list.map((x) => x.run).join(', ')}`, where);
    return [u.id];
  };
  const one = (ref: string, where: string): string => {
    const ids = refs(ref, where);
    if (ids.length !== 1) throw new MoelabError(`"${ref}" names ${ids.length} runs; name one (${ids.join(', ')})`, where);
    return ids[0]!;
  };
  const firstTrain = recipe.phases.find((p) => p.type === 'train' && p.from === undefined);
  const lastMerge = [...recipe.phases].reverse().find((p) => p.type === 'merge');
  recipe.phases.forEach((p, i) => {
    const where = `$.phases[${i}]`;
    const list: Unit[] = [];
    if (p.type === 'train') {
      const train = { ...base, ...trainOf(p) };
      const from = p.from === undefined ? undefined : one(p.from, `${where}.from`);
      if (p.forEach === 'domain') {
        for (const d of domains)
          list.push({
            kind: 'train',
            id: `${p.name}.${d}`,
            phase: p.name,
            run: d,
            deps: from ? [from] : [],
            from,
            domain: d,
            train,
            data: parseMixture(p.data, domains, `${where}.data`, d),
          });
      } else
        list.push({
          kind: 'train',
          id: p.name,
          phase: p.name,
          run: p.name,
          deps: from ? [from] : [],
          from,
          train,
          data: parseMixture(p.data, domains, `${where}.data`),
        });
    } else if (p.type === 'merge') {
      const train = { ...base, ...trainOf(p) };
      const from = Array.isArray(p.from) ? p.from : [p.from];
      const ids = from.flatMap((r, j) => refs(r, Array.isArray(p.from) ? `${where}.from[${j}]` : `${where}.from`));
      const [seed, ...experts] = ids;
      for (const u of p.upcyclers) {
        const label = upcyclerLabel(u);
        list.push({
          kind: 'merge',
          id: `${p.name}.${label}`,
          phase: p.name,
          run: label,
          deps: ids,
          upcycler: u,
          seed: seed!,
          experts,
          train,
          data: parseMixture(p.data, domains, `${where}.data`),
        });
      }
    } else {
      p.runs.forEach((r, j) => {
        const at = `${where}.runs[${j}]`;
        const refPhase = lastMerge ? byPhase.get(lastMerge.name)?.[0]?.id : undefined;
        const reference = r.reference !== undefined ? one(r.reference, `${at}.reference`) : r.match === 'steps' ? undefined : refPhase;
        if (r.match !== 'steps' && reference === undefined)
          throw new MoelabError(`a ${r.match}-matched baseline needs a "reference" run (there is no merge phase before it to default to)`, at);
        // Training settings: the recipe's, then the reference phase's (lr, warm-up, …), then the run's own.
        const refUnit = reference ? units.find((u) => u.id === reference) : undefined;
        const train = { ...base, ...(refUnit?.train ?? {}), ...trainOf(r) };
        if (r.match !== 'steps') delete train.steps;
        const data = parseMixture(r.data, domains, `${at}.data`);
        const id = `${p.name}.${r.name}`;
        const common = { id, phase: p.name, run: r.name!, train, data, reference, match: r.match };
        if (r.kind === 'scratch') {
          const like = r.like !== undefined ? one(r.like, `${at}.like`) : reference;
          if (!like) throw new MoelabError('a scratch baseline needs "like" (the run whose architecture it trains)', at);
          list.push({ kind: 'scratch', ...common, like, deps: [...new Set([like, ...(reference ? [reference] : [])])] });
        } else {
          const fromRef = r.from ?? firstTrain?.name;
          if (fromRef === undefined) throw new MoelabError('this baseline needs "from" (there is no train phase to default to)', at);
          const from = one(fromRef, r.from !== undefined ? `${at}.from` : at);
          const deps = [...new Set([from, ...(reference ? [reference] : [])])];
          if (r.kind === 'dense-continue') list.push({ kind: 'dense-continue', ...common, from, deps });
          else list.push({ kind: 'upcycle', ...common, upcycler: r.upcycler!, from, deps });
        }
      });
    }
    byPhase.set(p.name, list);
    units.push(...list);
  });
  return units;
}

/** The unit and all its ancestors. */
export function lineage(id: string, units: readonly Unit[]): Set<string> {
  const byId = new Map(units.map((u) => [u.id, u]));
  const out = new Set<string>();
  const visit = (x: string) => {
    if (out.has(x)) return;
    out.add(x);
    for (const d of byId.get(x)?.deps ?? []) visit(d);
  };
  visit(id);
  return out;
}

/** A short description of a unit for the table and progress lines. */
export function describeUnit(u: Unit): string {
  switch (u.kind) {
    case 'train':
      return u.from ? `continue ${u.from} on ${u.domain ?? 'the mixture'}` : `dense from scratch on ${u.domain ?? 'the mixture'}`;
    case 'merge':
      return `${upcyclerType(u.upcycler)}(${[u.seed, ...u.experts].join(', ')})`;
    case 'dense-continue':
      return `continue ${u.from}${u.reference ? `, ${u.match}-matched to ${u.reference}` : ''}`;
    case 'upcycle':
      return `${upcyclerType(u.upcycler)}(${u.from})${u.reference ? `, ${u.match}-matched to ${u.reference}` : ''}`;
    case 'scratch':
      return `${u.like}'s architecture from scratch${u.reference ? `, ${u.match}-matched to ${u.reference}` : ''}`;
  }
}
