/**
 * The recipe file (docs/recipes.md): a declarative branch–train–mix pipeline.
 *
 *   { "recipe": name, "corpus": { "domains": {name: path} | "folder": path, "heldOut": 0.05 },
 *     "model": <model spec>, "train": <training defaults>, "seed": 0,
 *     "phases": [ train | merge | baselines, … ], "eval": { "batches", "batchSize", "seqLen", "routingShares" } }
 *
 * Phase types:
 *   train      fresh from `model` (no `from`) or continued from one finished run (`from`); with
 *              `forEach: "domain"` one run per domain (the BTX/BAM branches), all independent.
 *   merge      `from: [seed, experts…]` (`phase.*` expands to every run of a phase) through each listed
 *              upcycler, then trained; one independent run per upcycler.
 *   baselines  `runs`: dense continuation of the seed, another upcycler on the seed, or a model of a
 *              merge's architecture trained from scratch, each matched in data (same tokens as the
 *              reference pipeline after `from`) or compute (same training FLOPs) or a fixed step count.
 *
 * Validation names the JSON path of the first problem (`$.phases[3].from: …`) and suggests close names.
 */
import { closeMatches, MoelabError, type NodeSpec, type Registry, type Static, trainConfigSchema, Type, validateConfig } from '@moelab/core';
import { parseMixture } from '../domains.js';

const trainOverrides = trainConfigSchema.properties;

const corpusSchema = Type.Object(
  {
    domains: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'domain name -> text file or folder (relative to the recipe file)' })),
    folder: Type.Optional(Type.String({ description: 'a folder: each text file or sub-folder is one domain' })),
    heldOut: Type.Number({ exclusiveMinimum: 0, exclusiveMaximum: 1, default: 0.05, description: "fraction of each domain's text held out (its tail)" }),
    tokenizer: Type.Union([Type.Literal('bytes')], { default: 'bytes', description: 'bytes: UTF-8 bytes, vocabulary 256 (bits per token = bits per byte)' }),
  },
  { additionalProperties: false },
);

const evalSchema = Type.Object(
  {
    metric: Type.Union([Type.Literal('bits-per-byte')], { default: 'bits-per-byte' }),
    batches: Type.Integer({ minimum: 1, default: 10, description: 'held-out batches per domain' }),
    batchSize: Type.Optional(Type.Integer({ minimum: 1, description: 'sequences per held-out batch (default: train.batchSize)' })),
    seqLen: Type.Optional(Type.Integer({ minimum: 1, description: 'tokens per held-out window (default: train.seqLen)' })),
    perDomain: Type.Boolean({ default: true }),
    routingShares: Type.Boolean({ default: true, description: 'per domain, the share of tokens whose first-choice expert is each expert' }),
    every: Type.Integer({ minimum: 0, default: 0, description: 'also evaluate every N steps during training (metrics.jsonl; 0 = only at the end)' }),
  },
  { additionalProperties: false },
);

const name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]*$', description: 'letters, digits, - and _' });

const trainPhaseSchema = Type.Object(
  {
    type: Type.Literal('train'),
    name,
    from: Type.Optional(Type.String({ description: 'a finished run to continue (a phase name, or phase.domain)' })),
    forEach: Type.Optional(Type.Literal('domain')),
    data: Type.String({
      default: 'mix',
      description: 'mix | domain:<name> | domain:<name>+mix:<fraction> (in a forEach phase: domain | domain+mix:<fraction>)',
    }),
    ...trainOverrides,
  },
  { additionalProperties: false },
);

const upcyclerRef = Type.Union([Type.String(), Type.Object({ type: Type.String(), label: Type.Optional(name) }, { additionalProperties: true })], {
  description: 'an upcycler name, or { "type": name, "label": run name, …its config }',
});

const mergePhaseSchema = Type.Object(
  {
    type: Type.Literal('merge'),
    name,
    from: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1 })], { description: '[seed, experts…]; phase.* = every run of a phase' }),
    upcyclers: Type.Array(upcyclerRef, { minItems: 1 }),
    data: Type.String({ default: 'mix' }),
    ...trainOverrides,
  },
  { additionalProperties: false },
);

const baselineRunSchema = Type.Object(
  {
    kind: Type.Union([Type.Literal('dense-continue'), Type.Literal('upcycle'), Type.Literal('scratch')], {
      description:
        'dense-continue: train `from` on; upcycle: `upcycler` applied to `from`, then trained; scratch: the architecture of `like`, freshly initialised',
    }),
    name: Type.Optional(name),
    from: Type.Optional(Type.String({ description: 'the run it starts from (default: the first train phase)' })),
    upcycler: Type.Optional(upcyclerRef),
    like: Type.Optional(Type.String({ description: 'scratch: the run whose architecture is trained from scratch (default: reference)' })),
    reference: Type.Optional(Type.String({ description: 'the run it is matched to (default: the first run of the last merge phase)' })),
    match: Type.Union([Type.Literal('data'), Type.Literal('compute'), Type.Literal('steps')], { default: 'data' }),
    data: Type.String({ default: 'mix' }),
    ...trainOverrides,
  },
  { additionalProperties: false },
);

const baselinesPhaseSchema = Type.Object(
  {
    type: Type.Literal('baselines'),
    name,
    runs: Type.Array(Type.Union([Type.String(), Type.Object({}, { additionalProperties: true })]), { minItems: 1 }),
  },
  { additionalProperties: false },
);

export const recipeSchema = Type.Object(
  {
    recipe: Type.String({ default: 'recipe', description: 'a name for the pipeline' }),
    description: Type.Optional(Type.String()),
    corpus: corpusSchema,
    model: Type.Object({ type: Type.String() }, { additionalProperties: true, description: 'the dense model spec every fresh run starts from' }),
    train: Type.Object(trainOverrides, { additionalProperties: false, default: {}, description: 'training defaults for every phase' }),
    seed: Type.Integer({ default: 0, description: 'initialisation, data order and held-out windows' }),
    phases: Type.Array(Type.Object({}, { additionalProperties: true }), { minItems: 1 }),
    eval: Type.Object(evalSchema.properties, { additionalProperties: false, default: {} }),
  },
  { additionalProperties: false },
);

export type TrainOverrides = Static<typeof trainPhaseSchema> extends infer T ? Omit<T, 'type' | 'name' | 'from' | 'forEach' | 'data'> : never;
export type TrainPhase = Static<typeof trainPhaseSchema>;
export type MergePhase = Static<typeof mergePhaseSchema>;
export type BaselineRun = Static<typeof baselineRunSchema>;
export type UpcyclerRef = Static<typeof upcyclerRef>;
export interface BaselinesPhase {
  type: 'baselines';
  name: string;
  runs: BaselineRun[];
}
export type Phase = TrainPhase | MergePhase | BaselinesPhase;
export type RecipeEval = Static<typeof evalSchema>;

export interface Recipe {
  recipe: string;
  description?: string;
  corpus: Static<typeof corpusSchema>;
  model: NodeSpec & object;
  train: Partial<Record<keyof typeof trainOverrides, number>>;
  seed: number;
  phases: Phase[];
  eval: RecipeEval;
}

export const PHASE_TYPES = ['train', 'merge', 'baselines'] as const;
export const BASELINE_KINDS = ['dense-continue', 'upcycle', 'scratch'] as const;
const MATCH_SHORT: Record<string, string> = { DM: 'data', CM: 'compute' };

function didYouMean(name: string, names: readonly string[], what: string): string {
  const close = closeMatches(name, names);
  return close.length ? `. Did you mean: ${close.join(', ')}?` : `; ${what}: ${names.join(', ') || 'none'}`;
}

/**
 * `"dense-continue:DM"`, `"sparse-upcycle:CM"`, `"moe-scratch:CM"` (the short forms of the spec's
 * example) -> baseline run objects. `DM` = data-matched, `CM` = compute-matched.
 */
function expandBaselineShorthand(s: string, where: string, upcyclerNames: readonly string[]): Record<string, unknown> {
  const [kind, m] = s.split(':');
  const match = m === undefined ? undefined : MATCH_SHORT[m];
  if (m !== undefined && !match) throw new MoelabError(`unknown match "${m}" in "${s}"; use DM (data-matched) or CM (compute-matched)`, where);
  const out: Record<string, unknown> = match ? { match } : {};
  if (kind === 'dense-continue') return { kind, ...out };
  if (kind === 'moe-scratch' || kind === 'scratch') return { kind: 'scratch', name: kind, ...out };
  if (kind && upcyclerNames.includes(kind)) return { kind: 'upcycle', upcycler: kind, name: kind, ...out };
  const names = ['dense-continue', 'moe-scratch', ...upcyclerNames];
  throw new MoelabError(`unknown baseline "${kind}"${didYouMean(kind ?? '', names, 'baselines')}`, where);
}

/** Validate one upcycler reference against the registry (name with close matches; config against its schema). */
function checkUpcycler(ref: UpcyclerRef, registry: Registry, where: string): void {
  const type = typeof ref === 'string' ? ref : ref.type;
  const names = registry.names('upcycler');
  if (!registry.has('upcycler', type))
    throw new MoelabError(
      `unknown upcycler "${type}"${names.length ? didYouMean(type, names, 'upcyclers') : ' (no upcyclers are registered)'}`,
      typeof ref === 'string' ? where : `${where}.type`,
    );
  if (typeof ref !== 'string') {
    const { type: _t, label: _l, ...config } = ref;
    validateConfig(registry.get('upcycler', type).schema, config, where, (k) => registry.names(k));
  }
}

export function upcyclerType(ref: UpcyclerRef): string {
  return typeof ref === 'string' ? ref : ref.type;
}

export function upcyclerLabel(ref: UpcyclerRef): string {
  return typeof ref === 'string' ? ref : (ref.label ?? ref.type);
}

/** The upcycler's own config (the reference without `type` and `label`). */
export function upcyclerConfig(ref: UpcyclerRef): Record<string, unknown> {
  if (typeof ref === 'string') return {};
  const { type: _t, label: _l, ...config } = ref;
  return config;
}

/**
 * Parse and validate a recipe (the JSON value of a recipe file): schema, phase types, names, references
 * between phases, data mixtures and upcycler names. Does not touch the corpus files (see `loadRecipeCorpus`).
 */
export function parseRecipe(value: unknown, registry: Registry): Recipe {
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new MoelabError('a recipe is a JSON object', '$');
  const raw = value as Record<string, unknown>;
  const top = validateConfig(recipeSchema, raw, '$', (k) => registry.names(k));
  if (!top.corpus.domains === !top.corpus.folder)
    throw new MoelabError('give either "domains" (name -> file) or "folder" (one domain per file or sub-folder)', '$.corpus');
  const domainNames = top.corpus.domains ? Object.keys(top.corpus.domains) : undefined;
  if (domainNames && domainNames.length === 0) throw new MoelabError('no domains listed', '$.corpus.domains');
  const upcyclerNames = registry.names('upcycler');
  const phases: Phase[] = [];
  /** phase name -> its run names (domain names for forEach phases, upcycler labels for merges). */
  const runsOf = new Map<string, { type: Phase['type']; runs: string[] | 'domains' }>();

  const resolveRef = (ref: string, where: string, many: boolean): void => {
    const [phase, sub, extra] = ref.split('.');
    const known = [...runsOf.keys()];
    if (!phase || extra !== undefined) throw new MoelabError(`"${ref}" is not a phase reference; write a phase name or phase.run`, where);
    const p = runsOf.get(phase);
    if (!p) {
      const later = (raw.phases as { name?: unknown }[]).some((q) => q?.name === phase);
      throw new MoelabError(
        later
          ? `phase "${phase}" comes later in the recipe; a phase can only use the phases before it`
          : `no phase named "${phase}"${didYouMean(phase, known, 'phases so far')}`,
        where,
      );
    }
    const multi = p.runs === 'domains' || p.runs.length > 1;
    if (sub === undefined || sub === '*') {
      if (multi && !many) throw new MoelabError(`phase "${phase}" has several runs; name one (${phase}.<run>)`, where);
      return;
    }
    const names = p.runs === 'domains' ? (domainNames ?? []) : p.runs;
    if (p.runs === 'domains' && !domainNames) return; // folder corpora: domain names are known once the folder is read
    if (!names.includes(sub)) throw new MoelabError(`phase "${phase}" has no run "${sub}"${didYouMean(sub, names, 'runs')}`, where);
  };

  top.phases.forEach((ph, i) => {
    const where = `$.phases[${i}]`;
    const type = (ph as { type?: unknown }).type;
    if (typeof type !== 'string') throw new MoelabError(`a phase needs a "type": ${PHASE_TYPES.join(', ')}`, where);
    if (!(PHASE_TYPES as readonly string[]).includes(type))
      throw new MoelabError(`unknown phase type "${type}"${didYouMean(type, PHASE_TYPES, 'phase types')}`, `${where}.type`);
    const pname = (ph as { name?: unknown }).name;
    if (typeof pname === 'string' && runsOf.has(pname)) throw new MoelabError(`two phases are named "${pname}"`, `${where}.name`);
    if (type === 'train') {
      const p = validateConfig(trainPhaseSchema, ph, where);
      if (p.from !== undefined) resolveRef(p.from, `${where}.from`, false);
      if (p.forEach === 'domain') {
        if (!/^domain(\+mix:[0-9.]+)?$/.test(p.data) && !p.data.startsWith('mix'))
          throw new MoelabError(`in a forEach: "domain" phase use data "domain" or "domain+mix:<fraction>" (got "${p.data}")`, `${where}.data`);
        if (domainNames) parseMixture(p.data, domainNames, `${where}.data`, domainNames[0]);
      } else if (domainNames) parseMixture(p.data, domainNames, `${where}.data`);
      if (p.steps === undefined && top.train.steps === undefined) throw new MoelabError('how many steps? give "steps" here or in $.train', where);
      phases.push(p);
      runsOf.set(p.name, { type: 'train', runs: p.forEach ? 'domains' : [p.name] });
    } else if (type === 'merge') {
      const p = validateConfig(mergePhaseSchema, ph, where);
      const from = Array.isArray(p.from) ? p.from : [p.from];
      from.forEach((r, j) => {
        resolveRef(r, Array.isArray(p.from) ? `${where}.from[${j}]` : `${where}.from`, j > 0 || !Array.isArray(p.from));
      });
      const labels: string[] = [];
      p.upcyclers.forEach((u, j) => {
        checkUpcycler(u, registry, `${where}.upcyclers[${j}]`);
        const label = upcyclerLabel(u);
        if (labels.includes(label)) throw new MoelabError(`two upcyclers of this phase are called "${label}"; give one a "label"`, `${where}.upcyclers[${j}]`);
        labels.push(label);
      });
      if (domainNames) parseMixture(p.data, domainNames, `${where}.data`);
      if (p.steps === undefined && top.train.steps === undefined) throw new MoelabError('how many steps? give "steps" here or in $.train', where);
      phases.push(p);
      runsOf.set(p.name, { type: 'merge', runs: labels });
    } else {
      const p = validateConfig(baselinesPhaseSchema, ph, where);
      const runs: BaselineRun[] = [];
      const names: string[] = [];
      p.runs.forEach((r, j) => {
        const at = `${where}.runs[${j}]`;
        const obj = typeof r === 'string' ? expandBaselineShorthand(r, at, upcyclerNames) : r;
        const kind = (obj as { kind?: unknown }).kind;
        if (typeof kind === 'string' && !(BASELINE_KINDS as readonly string[]).includes(kind))
          throw new MoelabError(`unknown baseline kind "${kind}"${didYouMean(kind, BASELINE_KINDS, 'kinds')}`, `${at}.kind`);
        const run = validateConfig(baselineRunSchema, obj, at);
        if (run.from !== undefined) resolveRef(run.from, `${at}.from`, false);
        if (run.reference !== undefined) resolveRef(run.reference, `${at}.reference`, false);
        if (run.like !== undefined) resolveRef(run.like, `${at}.like`, false);
        if (run.kind === 'upcycle') {
          if (run.upcycler === undefined) throw new MoelabError('an "upcycle" baseline needs "upcycler"', at);
          checkUpcycler(run.upcycler, registry, `${at}.upcycler`);
        } else if (run.upcycler !== undefined) throw new MoelabError(`"upcycler" is only for kind "upcycle" (this is "${run.kind}")`, `${at}.upcycler`);
        if (run.match === 'steps' && run.steps === undefined) throw new MoelabError('match "steps" needs "steps"', at);
        if (domainNames) parseMixture(run.data, domainNames, `${at}.data`);
        const runName = run.name ?? (run.kind === 'upcycle' ? upcyclerLabel(run.upcycler!) : run.kind);
        if (names.includes(runName)) throw new MoelabError(`two baselines are called "${runName}"; give one a "name"`, at);
        names.push(runName);
        runs.push({ ...run, name: runName });
      });
      phases.push({ type: 'baselines', name: p.name, runs });
      runsOf.set(p.name, { type: 'baselines', runs: names });
    }
  });
  return { ...top, model: top.model as NodeSpec & object, phases } as Recipe;
}
