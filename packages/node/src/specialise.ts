/**
 * Knowledge manipulation by expert masking (docs/monet.md#finding-experts-to-mask; MONET, arXiv 2412.04139): find the experts that specialise in one
 * domain of a labelled corpus from routing statistics alone, mask them at inference, and measure the
 * per-domain perplexity before and after.
 *
 * 1. Routing statistics: each domain's text (a corpus split, cut into non-overlapping windows) goes
 *    through the model in eval mode; every MoE layer's `RoutingStats` give, per layer and expert, the
 *    number of assignments c_d(e) the router made on the tokens of domain d (its intended assignments,
 *    before capacity drops; soft mixers report their per-expert mass), and n_d the tokens seen.
 * 2. Specialisation score of expert e for the target domain D (option `score`):
 *    - `share-diff` (default): how much more of D's traffic the expert carries than of the rest's,
 *        s(e) = c_D(e) / C_D − c_¬D(e) / C_¬D,   C = Σ_e c,  ¬D = all other domains pooled
 *      (favours experts that are both busy on D and specific to it: masking them costs D the most).
 *    - `share-ratio`: the expert's share of D's assignments over its share of all other
 *      domains' assignments, with add-one smoothing:
 *        s(e) = [(c_D(e) + 1) / (C_D + E)] / [(c_¬D(e) + 1) / (C_¬D + E)],   C = Σ_e c
 *      (> 1: routed to more often on D than elsewhere; pools the other domains, so it is robust when
 *      there are many small domains).
 *    - `skew` (the MONET paper's rule): mean routing frequency per token on D over the
 *      highest frequency on any other domain, s(e) = f_D(e) / max_{d≠D} f_d(e), f_d = c_d / n_d;
 *      the paper masks experts with s ≥ 2. We count hard assignments (MONET's composed expert (i, j)
 *      counts once per token when some head selected i and j), not the soft score G.
 * 3. Selection, per layer, among the experts that carry at least `minShare` of D's assignments
 *    (default 0.5 / E: half the uniform share; without it the ratio scores are dominated by experts
 *    seen a handful of times on D and never elsewhere — measured: masking those changes nothing):
 *    `threshold` t → every candidate with s(e) ≥ t; otherwise `fraction` f → the max(1, round(f·E))
 *    highest-scoring candidates that lean towards D (s > 0 for share-diff, s > 1 for the ratios).
 * 4. Masking: `ForwardContext.expertMask` (layer path → expert ids). Honoured by the `moe` layer for
 *    every router (assignment routers drop the assignments; Soft MoE / SMEAR / Mixture of Tokens see a
 *    bank whose masked experts output zeros / have zero merge weight), MONET (G' = G ⊙ M), PEER (removed
 *    from retrieval) and FFF (leaf weight zeroed). Other layers that route (Autonomy-of-Experts,
 *    SwitchHead attention) cannot honour a mask: `checkMask` rejects masks that name them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { RoutingObserver } from '@moelab/compress';
import {
  ByteTokenizer,
  crossEntropy,
  type ForwardContext,
  forwardContext,
  MoELayer,
  MoelabError,
  type Module,
  Rng,
  type RouterLogitEdit,
  type TokenSource,
  tf,
} from '@moelab/core';
import { FFFLayer, MonetLayer, PEERLayer } from '@moelab/experts';
import type { Model } from './checkpoint.js';
import { writeFileAtomic } from './fsutil.js';
import { type Corpus, CorpusTokens, type Document } from './corpus.js';

export type SpecialisationScore = 'share-diff' | 'share-ratio' | 'skew';
export const SPECIALISATION_SCORES: readonly SpecialisationScore[] = ['share-diff', 'share-ratio', 'skew'];

export const MASK_FORMAT = 'moelab-expert-mask-v1';

/** A layer that honours `ctx.expertMask`. */
export interface MaskableLayer {
  path: string;
  numExperts: number;
  /** What the ids mean (for messages and the mask file). */
  kind: 'moe' | 'monet' | 'peer' | 'fff';
}

/** Every layer of the model that can have experts masked, by path. */
export function maskableLayers(model: Module): Map<string, MaskableLayer> {
  const out = new Map<string, MaskableLayer>();
  for (const m of model.modules()) {
    if (m instanceof MoELayer) out.set(m.path, { path: m.path, numExperts: m.experts.numExperts, kind: 'moe' });
    else if (m instanceof MonetLayer) out.set(m.path, { path: m.path, numExperts: m.numExperts, kind: 'monet' });
    else if (m instanceof PEERLayer) out.set(m.path, { path: m.path, numExperts: m.numExperts, kind: 'peer' });
    else if (m instanceof FFFLayer) out.set(m.path, { path: m.path, numExperts: m.numLeaves, kind: 'fff' });
  }
  return out;
}

/** Throws a clear error when a mask names a layer that does not exist, cannot honour a mask, or an expert id out of range. */
export function checkMask(model: Module, mask: Map<string, Set<number>>, where = 'mask'): void {
  const layers = maskableLayers(model);
  const modules = new Map(model.modules().map((m) => [m.path, m]));
  for (const [path, ids] of mask) {
    const layer = layers.get(path);
    if (!layer) {
      const m = modules.get(path);
      const known = [...layers.keys()].join(', ') || 'none';
      throw new MoelabError(
        m
          ? `layer "${path}" (${m.constructor.name}) cannot honour an expert mask; maskable layers: ${known}`
          : `the model has no layer "${path}"; maskable layers: ${known}`,
        where,
      );
    }
    for (const id of ids)
      if (!Number.isInteger(id) || id < 0 || id >= layer.numExperts)
        throw new MoelabError(`expert id ${id} is out of range [0, ${layer.numExperts}) for the ${layer.kind} layer "${path}"`, where);
  }
}

/** A document's label at `level` '/'-separated parts (SOTU "1790-1860/Whig" at level 1 is "1790-1860"); all parts when undefined. */
export function domainLabel(domain: string, level?: number): string {
  return level === undefined ? domain : domain.split('/').slice(0, level).join('/');
}

/** The labels of a corpus at `level`, sorted. */
export function domainLabels(corpus: Corpus, level?: number): string[] {
  return [...new Set(corpus.docs.map((d) => domainLabel(d.domain, level)))].sort();
}

/** The level at which `label` is a whole domain label ('/'-parts count), with a clear error when no document has it. */
export function labelLevel(corpus: Corpus, label: string): number | undefined {
  const level = label.split('/').length;
  const full = corpus.docs.some((d) => d.domain === label);
  if (full) return corpus.docs.every((d) => d.domain.split('/').length === level) ? undefined : level;
  if (corpus.docs.some((d) => domainLabel(d.domain, level) === label)) return level;
  throw new MoelabError(`no document of ${corpus.name} has the domain "${label}"; domains: ${domainLabels(corpus, level).join(', ')}`, '--domain');
}

export interface DomainWindowOptions {
  split: 'train' | 'val';
  /** Tokens per window (targets); windows hold seqLen + 1 ids and overlap by one. */
  seqLen: number;
  /** At most this many target tokens per domain (default: all). */
  maxTokens?: number;
  level?: number;
}

/** Non-overlapping windows [seqLen + 1] of one domain's split text (documents joined like CorpusTokens). */
export function domainWindows(corpus: Corpus, domain: string, o: DomainWindowOptions): Int32Array[] {
  const filter = (d: Document) => domainLabel(d.domain, o.level) === domain;
  const ids = new CorpusTokens(corpus, new ByteTokenizer(), filter).tokens(o.split);
  const out: Int32Array[] = [];
  const limit = o.maxTokens ?? Number.POSITIVE_INFINITY;
  for (let at = 0; at + o.seqLen + 1 <= ids.length && (out.length + 1) * o.seqLen <= limit; at += o.seqLen) out.push(ids.subarray(at, at + o.seqLen + 1));
  return out;
}

function batches(windows: Int32Array[], batchSize: number): tf.Tensor2D[] {
  const out: tf.Tensor2D[] = [];
  for (let i = 0; i < windows.length; i += batchSize) {
    const part = windows.slice(i, i + batchSize);
    const T1 = part[0]!.length;
    const flat = new Int32Array(part.length * T1);
    for (let b = 0; b < part.length; b++) flat.set(part[b]!, b * T1);
    out.push(tf.tensor2d(flat, [part.length, T1], 'int32'));
  }
  return out;
}

export interface DomainStatsOptions extends Omit<DomainWindowOptions, 'split'> {
  split?: 'train' | 'val';
  batchSize?: number;
  /** Domains to collect (default: every label of the corpus at `level`). */
  domains?: string[];
}

/** Assignment counts of one layer: counts[d][e] for domain d (index into DomainRouting.domains), tokens[d]. */
export interface LayerDomainCounts {
  layer: string;
  numExperts: number;
  counts: number[][];
  tokens: number[];
}

export interface DomainRouting {
  domains: string[];
  /** Tokens per domain that went through the model. */
  tokens: number[];
  layers: LayerDomainCounts[];
}

/**
 * Per-domain routing statistics (eval mode, no mask): assignments per layer, expert and domain, from the
 * routing observer of `@moelab/compress` (its per-domain counts: intended assignments, before capacity).
 */
export function collectDomainRouting(model: Model, corpus: Corpus, o: DomainStatsOptions): DomainRouting {
  const domains = o.domains ?? domainLabels(corpus, o.level);
  // Only the counts are needed here: skip the expert re-runs and input statistics.
  const observer = new RoutingObserver({ outputs: false, inputs: false });
  const tokens = new Array<number>(domains.length).fill(0);
  domains.forEach((domain, d) => {
    const windows = domainWindows(corpus, domain, { ...o, split: o.split ?? 'train' });
    for (const batch of batches(windows, o.batchSize ?? 8)) {
      const [B, T1] = batch.shape;
      tokens[d]! += B * (T1 - 1);
      tf.tidy(() => observer.observe(model, tf.slice(batch, [0, 0], [B, T1 - 1]), { domain }));
      batch.dispose();
    }
  });
  const layers = [...observer.layers.values()].map((s) => ({
    layer: s.layer,
    numExperts: s.numExperts,
    counts: domains.map((domain) => Array.from(s.domainCounts.get(domain) ?? new Float64Array(s.numExperts))),
    tokens: domains.map((domain) => s.domainTokens.get(domain) ?? 0),
  }));
  return { domains, tokens, layers };
}

/** Specialisation score s(e) of every expert of one layer for `domain` (see the file comment). */
export function specialisationScores(layer: LayerDomainCounts, domains: string[], domain: string, score: SpecialisationScore = 'share-diff'): Float64Array {
  const D = domains.indexOf(domain);
  if (D < 0) throw new MoelabError(`unknown domain "${domain}"; domains: ${domains.join(', ')}`);
  if (domains.length < 2) throw new MoelabError('specialisation needs at least two domains');
  const E = layer.numExperts;
  const out = new Float64Array(E);
  const target = layer.counts[D]!;
  if (score === 'share-ratio' || score === 'share-diff') {
    const rest = new Float64Array(E);
    layer.counts.forEach((row, d) => {
      if (d !== D) for (let e = 0; e < E; e++) rest[e]! += row[e]!;
    });
    const cD = target.reduce((a, b) => a + b, 0);
    const cR = rest.reduce((a, b) => a + b, 0);
    for (let e = 0; e < E; e++)
      out[e] = score === 'share-diff' ? target[e]! / Math.max(1, cD) - rest[e]! / Math.max(1, cR) : (target[e]! + 1) / (cD + E) / ((rest[e]! + 1) / (cR + E));
    return out;
  }
  if (score === 'skew') {
    const freq = layer.counts.map((row, d) => row.map((c) => c / Math.max(1, layer.tokens[d]!)));
    for (let e = 0; e < E; e++) {
      let other = 0;
      for (let d = 0; d < freq.length; d++) if (d !== D) other = Math.max(other, freq[d]![e]!);
      const f = freq[D]![e]!;
      out[e] = f === 0 ? 0 : other === 0 ? Number.POSITIVE_INFINITY : f / other;
    }
    return out;
  }
  throw new MoelabError(`unknown specialisation score "${score}" (one of ${SPECIALISATION_SCORES.join(', ')})`, '--score');
}

export interface SelectOptions {
  score?: SpecialisationScore;
  /** Mask the max(1, round(fraction·E)) best-scoring candidates per layer (default 0.1). */
  fraction?: number;
  /** Candidates carry at least this share of the domain's assignments in their layer (default 0.5 / E). */
  minShare?: number;
  /** Instead: mask every expert with s ≥ threshold (and some assignment on the domain). */
  threshold?: number;
}

/** The saved mask: layer path -> expert ids, plus how it was chosen. */
export interface ExpertMaskFile {
  format: typeof MASK_FORMAT;
  domain: string;
  data?: string;
  score: SpecialisationScore;
  fraction?: number;
  threshold?: number;
  minShare?: number;
  layers: Record<string, number[]>;
}

/** Choose the experts to mask for `domain` in every maskable layer (layers that cannot honour a mask are skipped). */
export function selectExperts(stats: DomainRouting, domain: string, maskable: Map<string, MaskableLayer>, o: SelectOptions = {}): ExpertMaskFile {
  const score = o.score ?? 'share-diff';
  const fraction = o.fraction ?? 0.1;
  if (o.threshold === undefined && !(fraction > 0 && fraction <= 1)) throw new MoelabError(`fraction must be in (0, 1], got ${fraction}`, '--fraction');
  const D = stats.domains.indexOf(domain);
  const layers: Record<string, number[]> = {};
  for (const l of stats.layers) {
    if (!maskable.has(l.layer)) continue;
    const s = specialisationScores(l, stats.domains, domain, score);
    const E = l.numExperts;
    const cD = l.counts[D]!.reduce((a, b) => a + b, 0);
    const minShare = o.minShare ?? 0.5 / E;
    const ids = Array.from({ length: E }, (_, e) => e).filter((e) => l.counts[D]![e]! > 0 && l.counts[D]![e]! >= minShare * cD);
    let chosen: number[];
    if (o.threshold !== undefined) chosen = ids.filter((e) => s[e]! >= o.threshold!);
    else {
      const n = Math.max(1, Math.round(fraction * E));
      const lean = score === 'share-diff' ? 0 : 1;
      chosen = ids
        .filter((e) => s[e]! > lean)
        .sort((a, b) => s[b]! - s[a]! || a - b)
        .slice(0, n);
    }
    layers[l.layer] = chosen.sort((a, b) => a - b);
  }
  return {
    format: MASK_FORMAT,
    domain,
    score,
    ...(o.threshold !== undefined ? { threshold: o.threshold } : { fraction }),
    ...(o.minShare !== undefined ? { minShare: o.minShare } : {}),
    layers,
  };
}

export function maskOf(file: Pick<ExpertMaskFile, 'layers'>): Map<string, Set<number>> {
  return new Map(Object.entries(file.layers).map(([k, v]) => [k, new Set(v)]));
}

export function maskedCount(file: Pick<ExpertMaskFile, 'layers'>): number {
  return Object.values(file.layers).reduce((a, v) => a + v.length, 0);
}

export function writeMaskFile(path: string, file: ExpertMaskFile): void {
  writeFileAtomic(path, `${JSON.stringify(file, null, 2)}\n`);
}

export function readMaskFile(path: string): ExpertMaskFile {
  if (!existsSync(path)) throw new MoelabError('no such mask file', path);
  let f: ExpertMaskFile;
  try {
    f = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, path);
  }
  if (f?.format !== MASK_FORMAT) throw new MoelabError(`unknown mask format ${JSON.stringify(f?.format)} (expected "${MASK_FORMAT}")`, `${path}: $.format`);
  if (!f.layers || typeof f.layers !== 'object') throw new MoelabError('the mask has no "layers" object (layer path -> expert ids)', `${path}: $.layers`);
  for (const [k, v] of Object.entries(f.layers))
    if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x)))
      throw new MoelabError('expected an array of integer expert ids', `${path}: $.layers["${k}"]`);
  return f;
}

export interface DomainEval {
  domain: string;
  tokens: number;
  loss: number;
  perplexity: number;
}

/** Mean next-token cross-entropy and perplexity of every domain's split text (default: validation), optionally with experts masked. */
export function evaluateDomains(model: Model, corpus: Corpus, o: DomainStatsOptions & { mask?: Map<string, Set<number>> }): DomainEval[] {
  if (o.mask) checkMask(model, o.mask);
  const domains = o.domains ?? domainLabels(corpus, o.level);
  return domains.map((domain) => {
    const windows = domainWindows(corpus, domain, { ...o, split: o.split ?? 'val' });
    if (windows.length === 0) throw new MoelabError(`the ${o.split ?? 'val'} split of domain "${domain}" is shorter than one window of ${o.seqLen + 1} tokens`);
    let sum = 0;
    let n = 0;
    for (const batch of batches(windows, o.batchSize ?? 8)) {
      const [B, T1] = batch.shape;
      sum += tf.tidy(() => {
        const ctx = forwardContext(new Rng(0), false, o.mask ? { expertMask: o.mask } : {});
        const logits = model.forward(tf.slice(batch, [0, 0], [B, T1 - 1]), ctx);
        return crossEntropy(logits, tf.slice(batch, [0, 1], [B, T1 - 1])).dataSync()[0]! * B * (T1 - 1);
      });
      n += B * (T1 - 1);
      batch.dispose();
    }
    const loss = sum / n;
    return { domain, tokens: n, loss, perplexity: Math.exp(loss) };
  });
}

/**
 * Validation loss exactly like `Trainer.evaluate` (same windows for the same seed) with an optional
 * expert mask and router-logit edits (steering): what `moelab eval --mask` / `--steer` reports.
 */
export function evaluateWithMask(
  model: Model,
  data: TokenSource,
  o: { seed: number; batches: number; batchSize: number; seqLen: number; mask?: Map<string, Set<number>>; edits?: Map<string, RouterLogitEdit> },
): { loss: number; perplexity: number; bitsPerToken: number } {
  if (o.mask) checkMask(model, o.mask);
  let sum = 0;
  for (let i = 0; i < o.batches; i++) {
    sum += tf.tidy(() => {
      const extra: Partial<ForwardContext> = { ...(o.mask ? { expertMask: o.mask } : {}), ...(o.edits ? { routerLogitEdits: o.edits } : {}) };
      const ctx = forwardContext(Rng.derive(o.seed, 'eval-fwd', i), false, extra);
      const w = tf.tensor2d(data.batch(Rng.derive(o.seed, 'eval', i), o.batchSize, o.seqLen, 'val'), [o.batchSize, o.seqLen + 1], 'int32');
      const logits = model.forward(tf.slice(w, [0, 0], [o.batchSize, o.seqLen]), ctx);
      return crossEntropy(logits, tf.slice(w, [0, 1], [o.batchSize, o.seqLen])).dataSync()[0]!;
    });
  }
  const loss = sum / Math.max(1, o.batches);
  return { loss, perplexity: Math.exp(loss), bitsPerToken: loss / Math.LN2 };
}

/** What masking one domain's experts did: perplexity change (after / before − 1) on it and on the others. */
export interface DomainMaskEffect {
  domain: string;
  maskedExperts: number;
  /** Relative perplexity change on the masked domain. */
  target: number;
  othersMean: number;
  othersMax: number;
  /** 1 = no other domain's perplexity rose more than the target's. */
  rank: number;
}

/**
 * Mask each domain's experts in turn (statistics on `statsSplit`, default train; perplexity on the
 * validation split): the specificity check of the demonstration — a domain-specific effect puts every
 * target at rank 1 with `target` well above `othersMean`.
 */
export function maskEachDomain(
  model: Model,
  corpus: Corpus,
  o: DomainStatsOptions & SelectOptions & { statsTokens?: number },
): { baseline: DomainEval[]; stats: DomainRouting; effects: DomainMaskEffect[] } {
  const stats = collectDomainRouting(model, corpus, { ...o, split: 'train', maxTokens: o.statsTokens ?? o.maxTokens });
  const maskable = maskableLayers(model);
  const common = { ...o, split: 'val' as const, domains: stats.domains };
  const baseline = evaluateDomains(model, corpus, common);
  const effects = stats.domains.map((domain, t) => {
    const file = selectExperts(stats, domain, maskable, o);
    const after = evaluateDomains(model, corpus, { ...common, mask: maskOf(file) });
    const rise = after.map((a, i) => a.perplexity / baseline[i]!.perplexity - 1);
    const others = rise.filter((_, i) => i !== t);
    return {
      domain,
      maskedExperts: maskedCount(file),
      target: rise[t]!,
      othersMean: others.reduce((a, b) => a + b, 0) / Math.max(1, others.length),
      othersMax: Math.max(...others),
      rank: 1 + rise.filter((r) => r > rise[t]!).length,
    };
  });
  return { baseline, stats, effects };
}
