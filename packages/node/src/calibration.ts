/**
 * Calibration text for the compression commands (`moelab prune`, `merge-experts`, `steer`, `analyse`):
 * a text set is a corpus (`brown`, `sotu`, a path) optionally narrowed to one domain label
 * (`brown:news`, `sotu:1790-1860`), cut into non-overlapping windows of seqLen + 1 tokens, and run
 * through the routing observer of `@moelab/compress`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { type ObserveTag, parseSteerFile, RoutingObserver, type SteerFile, windowBatches, windowsLoss } from '@moelab/compress';
import { ByteTokenizer, type ForwardContext, MoelabError } from '@moelab/core';
import type { Model } from './checkpoint.js';
import { BUILTIN_CORPORA, type Corpus, CorpusTokens, type Document, loadCorpus } from './corpus.js';
import { domainLabel, domainLabels, labelLevel } from './specialise.js';

export interface TextSet {
  /** As the user wrote it (e.g. `brown:news`). */
  name: string;
  corpus: Corpus;
  /** Domain label inside the corpus, when narrowed. */
  domain?: string;
  level?: number;
}

/** Parse `corpus` or `corpus:label` (corpus = brown, sotu or a path). */
export function textSet(spec: string, flag: string): TextSet {
  if (!spec.trim()) throw new MoelabError('expected a corpus (brown, sotu, a path) or corpus:domain', flag);
  const cut = spec.indexOf(':');
  const head = cut > 0 ? spec.slice(0, cut) : spec;
  const narrowed = cut > 0 && ((BUILTIN_CORPORA as readonly string[]).includes(head) || existsSync(head)) && !existsSync(spec);
  const corpus = loadCorpus(narrowed ? head : spec);
  if (!narrowed) return { name: spec, corpus };
  const domain = spec.slice(cut + 1);
  let level: number | undefined;
  try {
    level = labelLevel(corpus, domain);
  } catch {
    throw new MoelabError(`no document of ${corpus.name} has the domain "${domain}"; domains: ${domainLabels(corpus).join(', ')}`, flag);
  }
  return { name: spec, corpus, domain, level };
}

/** Non-overlapping windows [seqLen + 1] of a text set's split, at most `maxTokens` targets. */
export function textWindows(set: TextSet, o: { split: 'train' | 'val'; seqLen: number; maxTokens: number }, flag: string): Int32Array[] {
  const filter = set.domain === undefined ? undefined : (d: Document) => domainLabel(d.domain, set.level) === set.domain;
  const ids = new CorpusTokens(set.corpus, new ByteTokenizer(), filter).tokens(o.split);
  const out: Int32Array[] = [];
  for (let at = 0; at + o.seqLen + 1 <= ids.length && (out.length + 1) * o.seqLen <= o.maxTokens; at += o.seqLen) out.push(ids.subarray(at, at + o.seqLen + 1));
  if (out.length === 0)
    throw new MoelabError(
      `the ${o.split} split of "${set.name}" has no tokens to calibrate on (${ids.length} tokens, one window needs ${o.seqLen + 1}; --calib-tokens ${o.maxTokens})`,
      flag,
    );
  return out;
}

/** Observe windows in batches; returns the summed cross-entropy and token count (the windows' perplexity for free). */
export function observeWindows(
  observer: RoutingObserver,
  model: Model,
  windows: Int32Array[],
  tag: ObserveTag,
  batchSize: number,
): { sum: number; tokens: number } {
  let sum = 0;
  let tokens = 0;
  for (const batch of windowBatches(windows, batchSize)) {
    const r = observer.observeLoss(model, batch, tag);
    batch.dispose();
    sum += r.sum;
    tokens += r.tokens;
  }
  return { sum, tokens };
}

/** One calibration pass over a text set: the observer with every statistic. */
export function calibrate(
  model: Model,
  set: TextSet,
  o: { seqLen: number; maxTokens: number; batchSize: number; flag: string; observer?: RoutingObserver; tag?: ObserveTag },
): RoutingObserver {
  const observer = o.observer ?? new RoutingObserver();
  const windows = textWindows(set, { split: 'train', seqLen: o.seqLen, maxTokens: o.maxTokens }, o.flag);
  observeWindows(observer, model, windows, o.tag ?? { domain: set.name }, o.batchSize);
  return observer;
}

/** Perplexity of the windows' next-token predictions, optionally with forward-context extras (router-logit edits). */
export function windowsPerplexity(model: Model, windows: Int32Array[], batchSize: number, extra: Partial<ForwardContext> = {}): number {
  return Math.exp(windowsLoss(model, windows, batchSize, extra));
}

/** Read a steering file written by `moelab steer`. */
export function readSteerFile(path: string): SteerFile {
  if (!existsSync(path)) throw new MoelabError('no such steering file', path);
  return parseSteerFile(readFileSync(path, 'utf8'), path);
}
