/**
 * One fine-tuning run on disk (`moelab finetune`, docs/finetune.md#the-command-line): load a base
 * checkpoint, attach the method's adapters (or unfreeze everything for `full`), train on the target data
 * with a progress line and `metrics.jsonl`, and evaluate bits per byte on the validation split of the
 * target data and, when asked, of a general corpus (forgetting) — before and after. Writes
 * `<out>/adapter/` (adapter tensors only, keyed by the base's content hash) or, for `full`,
 * `<out>/checkpoint/`.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type EvalMetrics,
  forwardContext,
  MoelabError,
  Rng,
  type NodeSpec,
  type Registry,
  type Tokenizer,
  type TokenSource,
  type TrainConfig,
  Trainer,
  tf,
} from '@moelab/core';
import { AdaptedModel, baseContentHash, finetuneMethod, type ParameterCounts } from '@moelab/finetune';
import { saveAdapterCheckpoint } from './adapter-checkpoint.js';
import { loadCheckpoint, type Model, saveCheckpoint } from './checkpoint.js';
import { type Corpus, CorpusTokens, loadCorpus } from './corpus.js';
import { Progress } from './progress.js';
import { metricsLine } from './run.js';

/** Token windows of a corpus, keeping only the documents whose domain starts with `domain` (e.g. `1946-2021`). */
export function domainTokens(data: string, domain?: string, options: { corpus?: Corpus; tokenizer?: Tokenizer } = {}): CorpusTokens {
  const corpus = options.corpus ?? loadCorpus(data);
  if (!domain) return new CorpusTokens(corpus, options.tokenizer);
  const keep = (d: { domain: string }) => d.domain === domain || d.domain.startsWith(`${domain}/`) || d.domain.startsWith(domain);
  if (!corpus.docs.some(keep)) {
    const domains = [...new Set(corpus.docs.map((d) => d.domain.split('/')[0]!))].sort();
    throw new MoelabError(`no document of "${data}" is in domain "${domain}" (domains: ${domains.join(', ')})`, '--domain');
  }
  return new CorpusTokens(corpus, options.tokenizer, keep);
}

export interface FinetuneRunOptions {
  registry: Registry;
  /** Base checkpoint directory. */
  base: string;
  method: string;
  /** Options of the method's (first) adapter node: rank, experts, targets, ... */
  options?: Record<string, unknown>;
  /** Target corpus (`sotu`, `brown`, a path) and optional domain prefix. */
  data: string;
  domain?: string;
  /** A second corpus whose validation loss measures forgetting (e.g. `brown`). */
  general?: string;
  train?: Partial<TrainConfig>;
  outDir: string;
  label?: string;
  quiet?: boolean;
  /** Pre-loaded token sources (the scenario reuses them across methods). */
  tokens?: { target?: TokenSource; general?: TokenSource };
}

export interface FinetuneRunResult {
  method: string;
  adapters: NodeSpec[];
  counts: ParameterCounts;
  baseHash: string;
  steps: number;
  wallSec: number;
  losses: number[];
  target: { before: EvalMetrics; after: EvalMetrics };
  general?: { before: EvalMetrics; after: EvalMetrics };
  /** Max |logit difference| between the adapted model at init and the base on one batch (0 = identity at init). */
  initDelta: number;
  /** Base tensors whose bytes changed during training (empty for every adapter method). */
  changedBaseTensors: string[];
  /** Where the result went: `<out>/adapter` or `<out>/checkpoint`. */
  saved: string;
}

function snapshot(entries: [string, tf.Variable][]): Map<string, Uint32Array> {
  return new Map(entries.map(([n, v]) => [n, new Uint32Array(Float32Array.from(v.dataSync() as Float32Array).buffer)]));
}

export function finetuneRun(o: FinetuneRunOptions): FinetuneRunResult {
  const method = finetuneMethod(o.method);
  const { model, config } = loadCheckpoint(o.base, o.registry);
  const seed = o.train?.seed ?? 0;
  const train: Partial<TrainConfig> = { seqLen: Math.min(model.contextLength, config.train?.seqLen ?? 128), ...method.train, ...o.train, seed };
  const probe = tf.tensor2d(
    Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 37 + 11) % model.vocabSize),
    [2, Math.min(16, model.contextLength)],
    'int32',
  );
  const baseHash = baseContentHash(model);
  const baseParams = model.namedParameters();
  const baseLogits = probeLogits(model, probe);
  // The adapters are built (and checked) before the data is read, unless the method asks for the data.
  let targetTokens = o.tokens?.target;
  const loadTarget = () => (targetTokens ??= domainTokens(o.data, o.domain));
  const ctx = {
    model,
    seed,
    get data() {
      return loadTarget();
    },
  };
  if (method.trainBase && o.options && Object.keys(o.options).length > 0)
    throw new MoelabError(`method "${method.name}" trains the base itself and takes no adapter options`, '--options');
  const nodes = method.adapters(o.options ?? {}, ctx);
  const adapted = nodes.length > 0 ? new AdaptedModel(model, nodes, o.registry, { seed, trainBase: method.trainBase }) : undefined;
  const initLogits = probeLogits(model, probe);
  const initDelta = Math.max(0, ...initLogits.map((x, i) => Math.abs(x - baseLogits[i]!)));
  const target = loadTarget();
  const general = o.general ? (o.tokens?.general ?? new CorpusTokens(loadCorpus(o.general))) : undefined;
  const evalOn = (data: TokenSource) => new Trainer(model, data, { ...train, steps: 1 }).evaluate();
  // At step 0 (the adapters start as the identity: this is the base's loss).
  const before = { target: evalOn(target), general: general ? evalOn(general) : undefined };
  const baseBytes = snapshot(baseParams);
  const trainer = adapted ? adapted.trainer(target, train) : new Trainer(model, target, train);
  const counts: ParameterCounts = adapted ? adapted.counts() : { trainable: model.parameterCount(), frozen: 0, base: model.parameterCount(), added: 0 };
  const c = trainer.config;

  mkdirSync(o.outDir, { recursive: true });
  const metricsPath = join(o.outDir, 'metrics.jsonl');
  writeFileSync(metricsPath, '');
  const log = (rec: Record<string, unknown>) => appendFileSync(metricsPath, `${JSON.stringify(rec)}\n`);
  log({
    type: 'start',
    method: method.name,
    base: o.base,
    baseHash,
    adapters: adapted?.attached.map((a) => a.node) ?? [],
    counts,
    train: c,
    data: o.data,
    domain: o.domain,
    backend: tf.getBackend(),
  });
  log({ type: 'eval', split: 'target', ...before.target });
  if (before.general) log({ type: 'eval', split: 'general', ...before.general });

  const progress = new Progress(c.steps, o.label ?? `finetune ${method.name}`, process.stderr, o.quiet);
  const t0 = performance.now();
  const losses: number[] = [];
  let tokensSeen = 0;
  while (trainer.step < c.steps) {
    const m = trainer.trainStep(trainer.step + 1 === c.steps ? { stats: true } : {});
    if (!Number.isFinite(m.loss)) throw new MoelabError(`the loss became ${m.loss} at step ${m.step}; lower the learning rate (--lr)`, o.label);
    losses.push(m.loss);
    tokensSeen += m.tokens;
    log(metricsLine(m));
    if (c.evalEvery > 0 && trainer.step % c.evalEvery === 0 && trainer.step < c.steps) log({ type: 'eval', split: 'target', ...trainer.evaluate() });
    progress.update(trainer.step, { loss: m.loss, 'tok/s': Math.round(tokensSeen / ((performance.now() - t0) / 1000)) });
  }
  progress.done();
  const wallSec = (performance.now() - t0) / 1000;
  const after = { target: evalOn(target), general: general ? evalOn(general) : undefined };
  log({ type: 'eval', split: 'target', ...after.target });
  if (after.general) log({ type: 'eval', split: 'general', ...after.general });

  const now = snapshot(baseParams);
  const changedBaseTensors = [...baseBytes]
    .filter(([n, a]) => {
      const b = now.get(n)!;
      return a.length !== b.length || a.some((x, i) => x !== b[i]);
    })
    .map(([n]) => n);

  const trainInfo = { ...c, data: o.data, ...(o.domain ? { domain: o.domain } : {}) };
  let saved: string;
  if (adapted && !method.trainBase) {
    saved = join(o.outDir, 'adapter');
    saveAdapterCheckpoint(saved, adapted, { method: method.name, step: trainer.step, seed, train: trainInfo, source: o.base });
  } else {
    saved = join(o.outDir, 'checkpoint');
    adapted?.detach(true);
    saveCheckpoint(saved, model, { spec: config.spec, step: trainer.step, seed: config.seed ?? 0, train: { ...c, data: o.data } });
  }
  probe.dispose();
  return {
    method: method.name,
    adapters: adapted?.attached.map((a) => a.node) ?? [],
    counts,
    baseHash,
    steps: trainer.step,
    wallSec,
    losses,
    target: { before: before.target, after: after.target },
    general: before.general && after.general ? { before: before.general, after: after.general } : undefined,
    initDelta,
    changedBaseTensors,
    saved,
  };
}

function probeLogits(model: Model, probe: tf.Tensor2D): Float32Array {
  return tf.tidy(() => Float32Array.from(model.forward(probe, forwardContext(new Rng(0), false)).dataSync() as Float32Array));
}
