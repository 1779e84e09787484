/**
 * ESFT expert selection (Wang et al., "Let the Expert Stick to His Last: Expert-Specialized Fine-Tuning
 * for Sparse Architectural Large Language Models", EMNLP 2024, arXiv 2407.01906, eq. 8; official code
 * github.com/deepseek-ai/ESFT): per MoE layer, the shortest prefix of the experts sorted by descending
 * relevance score whose cumulative score reaches p.
 *
 *   sort experts by score, descending (ties: lower id first); c ← 0
 *   for each expert e in that order:  if c ≥ p: stop;  select e;  c ← c + score_e
 *
 * So the expert whose score crosses p is included and at least one expert is selected for any p > 0.
 * The paper's thresholds: p = 0.2 with token scores (ESFT-Token), p = 0.1 with gate scores (ESFT-Gate);
 * gate scores sum to the mean top-k probability mass (< 1), and p is not renormalised.
 *
 * The two JSON documents keep the released formats (`results/expert_scores/<task>/summary.json` and
 * `results/expert_configs/<task>.json` of the official repository):
 *
 *   scores: { "token_scores": { "<layer>": { "<expert>": r } }, "gate_scores": { "<layer>": { "<expert>": g } } }
 *   config: { "experts": { "<layer>": [ids in selection order] }, "shared_experts": false, "non_expert_modules": false }
 *
 * docs/finetune.md#esft.
 */
import { MoelabError } from '@moelab/core';

/** Which relevance score drives the selection: token selection ratio r (ESFT-Token) or average gate score g (ESFT-Gate). */
export type EsftScoreKind = 'token' | 'gate';
export const ESFT_SCORE_KINDS: readonly EsftScoreKind[] = ['token', 'gate'];

/** The paper's threshold for each score kind (§4.3 of arXiv 2407.01906). */
export const ESFT_DEFAULT_P: Record<EsftScoreKind, number> = { token: 0.2, gate: 0.1 };

/** Scores per layer and expert, keyed by strings as in the released files. */
export interface EsftScoresFile {
  token_scores: Record<string, Record<string, number>>;
  gate_scores: Record<string, Record<string, number>>;
}

/** The expert-selection config: which routed experts of each layer train. */
export interface EsftExpertConfig {
  experts: Record<string, number[]>;
  /** Ablation (paper Table 3): also train the shared experts. */
  shared_experts: boolean;
  /** Ablation (paper Table 3): also train every non-expert parameter (attention, norms, embeddings, routers). */
  non_expert_modules: boolean;
}

/**
 * The selected expert ids of one layer, in selection order (descending score), by eq. 8.
 * `scores[e]` is expert e's score; p must be in (0, 1].
 */
export function selectExperts(scores: ArrayLike<number>, p: number): number[] {
  if (!(p > 0 && p <= 1)) throw new MoelabError(`the ESFT threshold p must be in (0, 1], got ${p}`);
  const order = Array.from({ length: scores.length }, (_, e) => e).sort((a, b) => scores[b]! - scores[a]! || a - b);
  const selected: number[] = [];
  let c = 0;
  for (const e of order) {
    if (c >= p) break;
    selected.push(e);
    c += scores[e]!;
  }
  return selected;
}

/** Layer keys in numeric order when they are integers ("1", "2", …, "10"), else as strings. */
export function sortedLayerKeys(keys: Iterable<string>): string[] {
  return [...keys].sort((a, b) => {
    const x = Number(a);
    const y = Number(b);
    return Number.isInteger(x) && Number.isInteger(y) ? x - y : a < b ? -1 : a > b ? 1 : 0;
  });
}

/** One layer's score table {"<expert>": score} as an array indexed by expert id (ids must be 0 … E-1). */
export function scoreArray(table: Record<string, number>, where: string): Float64Array {
  const ids = Object.keys(table);
  const out = new Float64Array(ids.length);
  const seen = new Uint8Array(ids.length);
  for (const id of ids) {
    const e = Number(id);
    if (!Number.isInteger(e) || e < 0 || e >= ids.length)
      throw new MoelabError(`expert id "${id}" is not one of 0 … ${ids.length - 1} (a layer lists every expert once)`, `${where}.${id}`);
    if (seen[e]) throw new MoelabError(`expert ${e} is listed twice`, `${where}.${id}`);
    const v = table[id];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
      throw new MoelabError(`score must be a finite number >= 0, got ${JSON.stringify(v)}`, `${where}.${id}`);
    out[e] = v;
    seen[e] = 1;
  }
  return out;
}

/** Check the shape of a scores document (as parsed JSON); `source` names the file in errors. */
export function parseEsftScores(doc: unknown, source = 'scores.json'): EsftScoresFile {
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new MoelabError('an ESFT scores file is a JSON object', source);
  const d = doc as Record<string, unknown>;
  for (const key of ['token_scores', 'gate_scores'] as const) {
    const v = d[key];
    if (!v || typeof v !== 'object' || Array.isArray(v))
      throw new MoelabError(`missing "${key}" ({ "<layer>": { "<expert>": score } })`, `${source}: $.${key}`);
    for (const [layer, table] of Object.entries(v as Record<string, unknown>)) {
      if (!table || typeof table !== 'object' || Array.isArray(table))
        throw new MoelabError('a layer maps expert ids to scores', `${source}: $.${key}.${layer}`);
      scoreArray(table as Record<string, number>, `${source}: $.${key}.${layer}`);
    }
  }
  return d as unknown as EsftScoresFile;
}

/** Check an expert-selection config (as parsed JSON). */
export function parseEsftConfig(doc: unknown, source = 'expert_config.json'): EsftExpertConfig {
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new MoelabError('an ESFT expert config is a JSON object', source);
  const d = doc as Record<string, unknown>;
  const known = ['experts', 'shared_experts', 'non_expert_modules'];
  for (const key of Object.keys(d))
    if (!known.includes(key)) throw new MoelabError(`unknown key "${key}" (an ESFT expert config has ${known.join(', ')})`, `${source}: $.${key}`);
  if (!d.experts || typeof d.experts !== 'object' || Array.isArray(d.experts))
    throw new MoelabError('missing "experts" ({ "<layer>": [expert ids] })', `${source}: $.experts`);
  for (const [layer, ids] of Object.entries(d.experts as Record<string, unknown>)) {
    if (!Array.isArray(ids) || ids.some((e) => !Number.isInteger(e) || (e as number) < 0))
      throw new MoelabError(`expected a list of expert ids (integers >= 0), got ${JSON.stringify(ids)}`, `${source}: $.experts.${layer}`);
    if (new Set(ids).size !== ids.length) throw new MoelabError(`an expert is listed twice: ${JSON.stringify(ids)}`, `${source}: $.experts.${layer}`);
  }
  for (const key of ['shared_experts', 'non_expert_modules'] as const) {
    if (d[key] === undefined) d[key] = false;
    else if (typeof d[key] !== 'boolean') throw new MoelabError(`must be true or false, got ${JSON.stringify(d[key])}`, `${source}: $.${key}`);
  }
  return d as unknown as EsftExpertConfig;
}

/**
 * The expert-selection config of a scores document: eq. 8 on every layer with the chosen score and
 * threshold (defaults: token scores, p = 0.2). Layers keep their keys; ids are in selection order.
 */
export function esftExpertConfig(
  scores: EsftScoresFile,
  o: { score?: EsftScoreKind; p?: number; sharedExperts?: boolean; nonExpertModules?: boolean } = {},
): EsftExpertConfig {
  const score = o.score ?? 'token';
  if (!ESFT_SCORE_KINDS.includes(score)) throw new MoelabError(`score must be token or gate, got "${score}"`);
  const p = o.p ?? ESFT_DEFAULT_P[score];
  const table = score === 'token' ? scores.token_scores : scores.gate_scores;
  const experts: Record<string, number[]> = {};
  for (const layer of sortedLayerKeys(Object.keys(table))) experts[layer] = selectExperts(scoreArray(table[layer]!, `$.${score}_scores.${layer}`), p);
  return { experts, shared_experts: o.sharedExperts ?? false, non_expert_modules: o.nonExpertModules ?? false };
}

/**
 * Trainable parameters of an ESFT run (§1.5 of docs/finetune.md#esft):
 *
 *   P_ESFT = Σ_l |E_s^l| · P_expert(l)  (+ shared experts and non-expert parameters when those flags are on)
 *
 * `perExpert(layer)` is the parameter count of one routed expert of that layer.
 */
export function esftTrainableParameters(
  config: EsftExpertConfig,
  perExpert: (layer: string) => number,
  extra: { shared?: number; nonExpert?: number } = {},
): number {
  let n = 0;
  for (const [layer, ids] of Object.entries(config.experts)) n += ids.length * perExpert(layer);
  if (config.shared_experts) n += extra.shared ?? 0;
  if (config.non_expert_modules) n += extra.nonExpert ?? 0;
  return n;
}
