/**
 * One run of a recipe ("unit"): build or load its model (fresh, continued, upcycled from finished runs,
 * or a merge's architecture from scratch), evaluate a merge at step 0, train it on its data mixture,
 * evaluate every domain's held-out text, and write `checkpoint/`, `metrics.jsonl` and `row.json` into
 * its run directory — the row last, atomically: a run with a row is finished.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  buildModel,
  loadState,
  MoelabError,
  modelSummary,
  type NodeSpec,
  type Registry,
  readSafetensors,
  Rng,
  type TrainConfig,
  Trainer,
  tf,
} from '@moelab/core';
import { type UpcycleSource, upcycle } from '@moelab/upcycle';
import { loadCheckpoint, type Model, readCheckpointConfig, saveCheckpoint } from '../checkpoint.js';
import { type HeldOutEval, type DomainTokens, evaluateHeldOut, mixtureLabel } from '../domains.js';
import { writeFileAtomic } from '../fsutil.js';
import { Progress } from '../progress.js';
import { describeUnit, lineage, type Unit } from './plan.js';
import { type Recipe, upcyclerType } from './schema.js';

/** What a finished run records (`row.json`); the results table is made of these. */
export interface RecipeRow {
  id: string;
  phase: string;
  run: string;
  kind: Unit['kind'];
  /** What the run is, in words (`btx(seed, branch.kjv, …)`). */
  what: string;
  /** Upcycler type, for merges and upcycled baselines. */
  upcycler?: string;
  deps: string[];
  data: string;
  steps: number;
  tokens: number;
  parameters: number;
  activeParameters: number;
  /** Forward FLOPs per token at the context length (attention included); training costs 3×. */
  forwardFlopsPerToken: number;
  /** Training FLOPs of this run: 3 · forwardFlopsPerToken · tokens. */
  trainFlops: number;
  /** Training FLOPs of this run and every run it descends from. */
  pipelineFlops: number;
  heldOut: HeldOutEval;
  /** A merge's held-out evaluation before its first training step. */
  step0?: HeldOutEval;
  /** Expert labels of the MoE layers (the sources an upcycler copied them from), when the spec names them. */
  expertNames?: string[];
  /** Upcycler notes and warnings. */
  notes?: string[];
  wallSec: number;
  /** Training tokens per second (excluding evaluation and upcycling). */
  tokensPerSec: number;
  /** Upcycling wall time in milliseconds (merges and upcycled baselines). */
  upcycleMs?: number;
  backend: string;
  /** Hash of everything that decides the run (config, data, sources): a changed recipe re-runs it. */
  fingerprint: string;
  finishedAt: string;
}

export interface UnitContext {
  registry: Registry;
  recipe: Recipe;
  units: readonly Unit[];
  data: DomainTokens;
  outDir: string;
  /** Rows of finished runs (at least this unit's dependencies). */
  rows: ReadonlyMap<string, RecipeRow>;
  quiet?: boolean;
  /** Progress lines instead of an in-place bar (parallel workers share one terminal). */
  lineProgress?: boolean;
}

export function unitDir(outDir: string, id: string): string {
  return join(outDir, id);
}

export function rowPath(outDir: string, id: string): string {
  return join(unitDir(outDir, id), 'row.json');
}

/** The finished row of a unit, if any. */
export function readRow(outDir: string, id: string): RecipeRow | undefined {
  const p = rowPath(outDir, id);
  if (!existsSync(p)) return undefined;
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as RecipeRow;
  } catch {
    throw new MoelabError('unreadable row.json (delete the run directory to re-run it)', p);
  }
}

/** Training settings of a unit with everything decided (steps of matched baselines from the rows). */
export function resolvedTrain(
  u: Unit,
  ctx: Pick<UnitContext, 'units' | 'rows' | 'registry'>,
  flopsPerToken?: number,
): Partial<TrainConfig> & { steps: number } {
  const train = { ...u.train };
  if (u.kind === 'dense-continue' || u.kind === 'upcycle' || u.kind === 'scratch') {
    if (u.match !== 'steps') {
      const ref = u.reference!;
      const inside = lineage(ref, ctx.units);
      if (u.kind !== 'scratch') for (const a of lineage(u.from, ctx.units)) inside.delete(a);
      const rows = [...inside].map((id) => {
        const r = ctx.rows.get(id);
        if (!r) throw new MoelabError(`run "${id}" has not finished`, u.id);
        return r;
      });
      const perStep = (train.batchSize ?? 16) * (train.seqLen ?? 64) * (train.accumulate ?? 1);
      const amount = u.match === 'data' ? rows.reduce((s, r) => s + r.tokens, 0) : rows.reduce((s, r) => s + r.trainFlops, 0);
      const per = u.match === 'data' ? perStep : 3 * flopsPerToken! * perStep;
      train.steps = Math.max(1, Math.round(amount / per));
    }
  }
  if (train.steps === undefined) throw new MoelabError('no step count', u.id);
  return train as Partial<TrainConfig> & { steps: number };
}

function checkpointOf(ctx: UnitContext, id: string): string {
  return join(unitDir(ctx.outDir, id), 'checkpoint');
}

/** A finished run's checkpoint as an upcycler source. */
function sourceOf(ctx: UnitContext, id: string): UpcycleSource {
  const dir = checkpointOf(ctx, id);
  const config = readCheckpointConfig(dir);
  const wpath = join(dir, 'model.safetensors');
  const file = readSafetensors(new Uint8Array(readFileSync(wpath)), wpath);
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [n, t] of file.tensors) weights.set(n, { shape: t.shape, data: t.data instanceof Float32Array ? t.data : Float32Array.from(t.data) });
  const opath = join(dir, 'optimizer.safetensors');
  const optimizer = existsSync(opath) ? readSafetensors(new Uint8Array(readFileSync(opath)), opath).tensors : undefined;
  return { name: id, spec: config.spec, weights, optimizer, step: config.step };
}

/** Training windows of a run's own domain (Nexus's domain embeddings), `count` windows of `len` tokens. */
function domainSamples(ctx: UnitContext, id: string, count: number, len: number): Int32Array[] {
  const u = ctx.units.find((x) => x.id === id);
  const domain = u?.kind === 'train' ? u.domain : undefined;
  const tokens = domain ? [ctx.data.tokens(domain, 'train')] : ctx.data.domains.map((d) => ctx.data.tokens(d, 'train'));
  const rng = Rng.derive(ctx.recipe.seed, 'domain-samples', id);
  const out: Int32Array[] = [];
  for (let i = 0; i < count; i++) {
    const src = tokens[i % tokens.length]!;
    const n = Math.min(len, src.length);
    const start = rng.int(Math.max(1, src.length - n + 1));
    out.push(src.slice(start, start + n));
  }
  return out;
}

interface Built {
  model: Model;
  spec: NodeSpec;
  upcycleMs?: number;
  notes?: string[];
}

function buildUnitModel(u: Unit, ctx: UnitContext, seed: number): Built {
  const { registry } = ctx;
  switch (u.kind) {
    case 'train':
      if (!u.from) return { model: buildModel<Model>(ctx.recipe.model, registry, seed), spec: ctx.recipe.model };
      return fromCheckpoint(checkpointOf(ctx, u.from), registry);
    case 'dense-continue':
      return fromCheckpoint(checkpointOf(ctx, u.from), registry);
    case 'scratch': {
      const spec = readCheckpointConfig(checkpointOf(ctx, u.like)).spec;
      return { model: buildModel<Model>(spec, registry, seed), spec };
    }
    case 'merge':
    case 'upcycle': {
      const seedId = u.kind === 'merge' ? u.seed : u.from;
      const expertIds = u.kind === 'merge' ? u.experts : [];
      const ctxLen = (ctx.recipe.model as { contextLength?: number }).contextLength ?? 64;
      const result = upcycle(
        registry,
        u.upcycler,
        {
          seed: sourceOf(ctx, seedId),
          experts: expertIds.length ? expertIds.map((id) => sourceOf(ctx, id)) : undefined,
          domainSamples: expertIds.length ? expertIds.map((id) => domainSamples(ctx, id, 64, ctxLen)) : undefined,
          calibration: domainSamples(ctx, seedId, 64, ctxLen),
        },
        { seed },
      );
      const model = buildModel<Model>(result.spec, registry, seed);
      loadState(model, result.weights, { source: `upcycler ${upcyclerType(u.upcycler)}` });
      return { model, spec: result.spec, upcycleMs: result.report.ms, notes: [...result.report.notes, ...result.report.warnings] };
    }
  }
}

function fromCheckpoint(dir: string, registry: Registry): Built {
  const { model, config } = loadCheckpoint(dir, registry);
  return { model, spec: config.spec };
}

/** Expert labels from the first MoE node of a spec that has `expertNames`. */
export function expertNamesOf(spec: unknown): string[] | undefined {
  if (!spec || typeof spec !== 'object') return undefined;
  if (Array.isArray(spec)) {
    for (const s of spec) {
      const r = expertNamesOf(s);
      if (r) return r;
    }
    return undefined;
  }
  const o = spec as Record<string, unknown>;
  if (Array.isArray(o.expertNames) && o.expertNames.every((x) => typeof x === 'string')) return o.expertNames as string[];
  for (const v of Object.values(o)) {
    const r = expertNamesOf(v);
    if (r) return r;
  }
  return undefined;
}

/** Run one unit to the end; returns its row (also written to `row.json`). */
export function executeUnit(u: Unit, ctx: UnitContext, fingerprint: string): RecipeRow {
  const t0 = performance.now();
  const dir = unitDir(ctx.outDir, u.id);
  mkdirSync(dir, { recursive: true });
  const metricsPath = join(dir, 'metrics.jsonl');
  writeFileSync(metricsPath, '');
  const log = (rec: Record<string, unknown>) => appendFileSync(metricsPath, `${JSON.stringify(rec)}\n`);
  const seed = u.train.seed ?? ctx.recipe.seed;
  const built = buildUnitModel(u, ctx, seed);
  const { model } = built;
  try {
    const summary = modelSummary(model);
    const train = resolvedTrain(u, ctx, summary.forwardFlopsPerToken);
    const c = { ...train, evalEvery: 0, seed };
    const evalOpts = {
      batches: ctx.recipe.eval.batches,
      batchSize: ctx.recipe.eval.batchSize ?? c.batchSize ?? 16,
      seqLen: ctx.recipe.eval.seqLen ?? c.seqLen ?? 64,
      seed: ctx.recipe.seed,
      routing: ctx.recipe.eval.routingShares,
    };
    log({
      type: 'start',
      id: u.id,
      spec: built.spec,
      train: c,
      data: mixtureLabel(u.data),
      parameters: summary.parameters,
      activeParameters: summary.activeParameters,
      backend: tf.getBackend(),
    });
    const step0 = u.kind === 'merge' || u.kind === 'upcycle' ? evaluateHeldOut(model, ctx.data, evalOpts) : undefined;
    if (step0) log({ type: 'eval', step: 0, ...step0 });
    const trainer = new Trainer(model, ctx.data.source(u.data), c);
    const progress = new Progress(trainer.config.steps, u.id, ctx.lineProgress ? lineStream() : process.stderr, ctx.quiet);
    let trainMs = 0;
    let tokens = 0;
    while (trainer.step < trainer.config.steps) {
      const m = trainer.trainStep();
      if (!Number.isFinite(m.loss))
        throw new MoelabError(`the loss became ${m.loss} at step ${m.step}; lower the learning rate ("lr") or enable clipping ("clip")`, `${u.id}`);
      trainMs += m.ms;
      tokens += m.tokens;
      log({ type: 'train', step: m.step, loss: m.loss, ce: m.ce, aux: m.aux, lr: m.lr, gradNorm: m.gradNorm, tokensPerSec: m.tokens / (m.ms / 1000) });
      if (ctx.recipe.eval.every > 0 && m.step % ctx.recipe.eval.every === 0 && m.step < trainer.config.steps)
        log({ type: 'eval', step: m.step, ...evaluateHeldOut(model, ctx.data, { ...evalOpts, routing: false }) });
      progress.update(trainer.step, { loss: m.loss, 'tok/s': Math.round(tokens / (trainMs / 1000)) });
    }
    progress.done();
    const heldOut = evaluateHeldOut(model, ctx.data, evalOpts);
    log({ type: 'eval', step: trainer.step, ...heldOut });
    saveCheckpoint(join(dir, 'checkpoint'), model, {
      spec: built.spec,
      step: trainer.step,
      seed,
      train: { ...trainer.config, data: `recipe:${mixtureLabel(u.data)}` },
      trainer,
    });
    trainer.optimizer.dispose();
    const trainFlops = 3 * summary.forwardFlopsPerToken * tokens;
    const parentFlops = [...lineage(u.id, ctx.units)].filter((id) => id !== u.id).reduce((s, id) => s + (ctx.rows.get(id)?.trainFlops ?? 0), 0);
    const row: RecipeRow = {
      id: u.id,
      phase: u.phase,
      run: u.run,
      kind: u.kind,
      what: describeUnit(u),
      ...(u.kind === 'merge' || u.kind === 'upcycle' ? { upcycler: upcyclerType(u.upcycler) } : {}),
      deps: u.deps,
      data: mixtureLabel(u.data),
      steps: trainer.step,
      tokens,
      parameters: summary.parameters,
      activeParameters: summary.activeParameters,
      forwardFlopsPerToken: summary.forwardFlopsPerToken,
      trainFlops,
      pipelineFlops: trainFlops + (u.kind === 'scratch' ? 0 : parentFlops),
      heldOut,
      ...(step0 ? { step0 } : {}),
      ...(expertNamesOf(built.spec) ? { expertNames: expertNamesOf(built.spec) } : {}),
      ...(built.notes?.length ? { notes: built.notes } : {}),
      wallSec: (performance.now() - t0) / 1000,
      tokensPerSec: tokens / Math.max(1e-9, trainMs / 1000),
      ...(built.upcycleMs !== undefined ? { upcycleMs: built.upcycleMs } : {}),
      backend: tf.getBackend(),
      fingerprint,
      finishedAt: new Date().toISOString(),
    };
    writeFileAtomic(rowPath(ctx.outDir, u.id), `${JSON.stringify(row, null, 2)}\n`);
    return row;
  } finally {
    model.dispose();
  }
}

/** stderr as a non-terminal stream: progress prints whole lines (parallel runs share the terminal). */
function lineStream(): NodeJS.WriteStream {
  return { isTTY: false, write: (s: string) => process.stderr.write(s) } as unknown as NodeJS.WriteStream;
}
