/**
 * One training run on disk: builds (or resumes) a model, trains it with progress output, appends
 * metrics to `metrics.jsonl`, evaluates periodically and saves an atomic checkpoint.
 */
import { appendFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  balanceOf,
  buildModel,
  type EvalMetrics,
  mergeRouting,
  MoelabError,
  type RoutingMetrics,
  routingMetrics,
  modelSummary,
  type ModelSummary,
  type NodeSpec,
  type Registry,
  type StepMetrics,
  type Tokenizer,
  type TrainConfig,
  Trainer,
  tf,
} from '@moelab/core';
import {
  hasOptimizerState,
  type Model,
  loadCheckpoint,
  loadCheckpointTokenizer,
  loadOptimizerState,
  readCheckpointConfig,
  saveCheckpoint,
} from './checkpoint.js';
import { CorpusTokens, loadCorpus } from './corpus.js';
import { Progress } from './progress.js';

export interface RunOptions {
  registry: Registry;
  spec: NodeSpec;
  train: Partial<TrainConfig>;
  /** Corpus name (`brown`, `sotu`) or a path to text. */
  data: string;
  outDir: string;
  /**
   * Continue a checkpoint: `resumeFrom`, or `outDir/checkpoint`. With its optimizer state the run
   * continues exactly; without (an imported checkpoint) from its weights with fresh optimizer state
   * from step 0 (RunResult.freshOptimizer).
   */
  resume?: boolean;
  /** The checkpoint directory --resume reads (default `outDir/checkpoint`); the run still writes `outDir/checkpoint`. */
  resumeFrom?: string;
  /** Stop early after this many seconds (then evaluate and save). */
  timeBudgetSec?: number;
  /** Save a checkpoint every N steps (0 = only at the end). */
  checkpointEvery?: number;
  label?: string;
  quiet?: boolean;
  /** Stop after this step even if train.steps is larger (used to test resume). */
  stopAfter?: number;
  tokens?: CorpusTokens;
  /** The tokenizer of the corpus and of the checkpoint (default: bytes; on resume: the checkpoint's). */
  tokenizer?: Tokenizer;
}

/**
 * One MoE layer's routing metrics over a step (docs/metrics.md: load fraction, entropies, drop rates,
 * CV, MaxVio, experts per token, z-loss, saturation, ...) plus the kept load (`load`) and the raw mean
 * per-token entropy in nats (`entropy`), kept for older readers.
 */
export interface LayerBalance extends RoutingMetrics {
  deadFraction: number;
  entropy?: number;
  load: number[];
}

export interface RunResult {
  model: Model;
  trainer: Trainer;
  summary: ModelSummary;
  steps: number;
  finalEval: EvalMetrics;
  tokensPerSec: number;
  wallSec: number;
  losses: number[];
  balance: LayerBalance[];
  /** A resumed checkpoint had no optimizer state: the run started fresh optimizer state (and schedule) on its weights. */
  freshOptimizer: boolean;
}

export function routingBalance(routing: StepMetrics['routing']): LayerBalance[] {
  return [...mergeRouting(routing).values()].map((s) => ({
    ...routingMetrics(s),
    deadFraction: balanceOf(s.intendedCounts ?? s.counts).deadFraction,
    entropy: s.entropy,
    load: s.load,
  }));
}

/** A layer's metrics with per-expert arrays and numbers rounded for the log (4 significant decimals). */
function roundLayer(b: LayerBalance): Record<string, unknown> {
  const r = (x: number) => (Number.isFinite(x) ? Number(x.toFixed(4)) : x);
  return Object.fromEntries(
    Object.entries(b)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => [k, Array.isArray(v) ? v.map(r) : typeof v === 'number' ? r(v) : v]),
  );
}

export function metricsLine(m: StepMetrics): Record<string, unknown> {
  return {
    type: 'train',
    step: m.step,
    loss: m.loss,
    ce: m.ce,
    aux: m.aux,
    lr: m.lr,
    gradNorm: m.gradNorm,
    tokensPerSec: m.tokens / (m.ms / 1000),
    // Only at the steps that computed routing statistics (`statsEvery`).
    ...(m.stats ? { routing: routingBalance(m.routing).map(roundLayer) } : {}),
  };
}

export function trainRun(o: RunOptions): RunResult {
  const ckptDir = join(o.outDir, 'checkpoint');
  let model: Model;
  let spec = o.spec;
  let train = o.train;
  let seed = o.train.seed ?? 0;
  let tokenizer = o.tokenizer;
  const from = o.resumeFrom ?? ckptDir;
  if (o.resume) {
    const cfg = readCheckpointConfig(from);
    tokenizer = loadCheckpointTokenizer(from, cfg);
    spec = cfg.spec;
    train = { ...(cfg.train ?? {}), ...stripUndefined(o.train), seed: cfg.seed };
    seed = cfg.seed;
    model = loadCheckpoint(from, o.registry).model;
  } else {
    model = buildModel<Model>(spec, o.registry, seed);
  }
  if (tokenizer && tokenizer.name !== 'byte' && tokenizer.vocabSize > model.vocabSize)
    throw new MoelabError(`the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabSize is ${model.vocabSize}`, 'tokenizer');
  const tokens = o.tokens ?? new CorpusTokens(loadCorpus(o.data), tokenizer);
  const trainer = new Trainer(model, tokens, { ...train, seed });
  const c = trainer.config;
  const freshOptimizer = o.resume === true && !hasOptimizerState(from);
  if (o.resume && !freshOptimizer) loadOptimizerState(from, trainer);
  if (trainer.step >= c.steps)
    throw new MoelabError(`the checkpoint is already at step ${trainer.step} of ${c.steps}; pass a larger --steps to continue`, from);
  mkdirSync(o.outDir, { recursive: true });
  const metricsPath = join(o.outDir, 'metrics.jsonl');
  const newLog = !o.resume || !existsSync(metricsPath);
  if (newLog) writeFileSync(metricsPath, '');
  const log = (rec: Record<string, unknown>) => appendFileSync(metricsPath, `${JSON.stringify(rec)}\n`);
  const summary = modelSummary(model);
  if (newLog || freshOptimizer)
    log({
      type: 'start',
      spec,
      train: c,
      data: o.data,
      parameters: summary.parameters,
      activeParameters: summary.activeParameters,
      backend: tf.getBackend(),
      ...(o.resume ? { resumedFrom: from, freshOptimizer } : {}),
    });

  const progress = new Progress(c.steps, o.label ?? 'train', process.stderr, o.quiet);
  const t0 = performance.now();
  let tokensSeen = 0;
  const losses: number[] = [];
  let routing: StepMetrics['routing'] = [];
  let lastEval: EvalMetrics | undefined;
  const stopAt = Math.min(c.steps, o.stopAfter ?? c.steps);
  const save = () => saveCheckpoint(ckptDir, model, { spec, step: trainer.step, seed, train: { ...c, data: o.data }, trainer, tokenizer });
  while (trainer.step < stopAt) {
    // The last step of this run always has routing statistics (the run's final balance).
    const m = trainer.trainStep(trainer.step + 1 === stopAt ? { stats: true } : {});
    if (!Number.isFinite(m.loss))
      throw new MoelabError(`the loss became ${m.loss} at step ${m.step}; lower the learning rate (--lr) or enable clipping`, o.label);
    tokensSeen += m.tokens;
    losses.push(m.loss);
    if (m.stats) routing = m.routing;
    log(metricsLine(m));
    if (c.evalEvery > 0 && trainer.step % c.evalEvery === 0) {
      lastEval = trainer.evaluate();
      log({ type: 'eval', ...lastEval });
    }
    if (o.checkpointEvery && trainer.step % o.checkpointEvery === 0) save();
    const secs = (performance.now() - t0) / 1000;
    progress.update(trainer.step, { loss: m.loss, ...(lastEval ? { 'val ppl': lastEval.perplexity } : {}), 'tok/s': Math.round(tokensSeen / secs) });
    if (o.timeBudgetSec && secs > o.timeBudgetSec) break;
  }
  progress.done();
  const wallSec = (performance.now() - t0) / 1000;
  const finalEval = lastEval?.step === trainer.step ? lastEval : trainer.evaluate();
  if (lastEval?.step !== trainer.step) log({ type: 'eval', ...finalEval });
  save();
  return {
    model,
    trainer,
    summary,
    steps: trainer.step,
    finalEval,
    tokensPerSec: tokensSeen / Math.max(1e-9, wallSec),
    wallSec,
    losses,
    balance: routingBalance(routing),
    freshOptimizer,
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
