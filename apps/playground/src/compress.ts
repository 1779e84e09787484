/**
 * Compression in the page (no DOM here; the view is compress-view.ts, the work runs in job-worker.ts):
 * a trained checkpoint (a run of the page, or uploaded files), one `@moelab/compress` method, and what it
 * changed — checkpoint size, parameters and validation perplexity — with a score per expert:
 *
 *   quantize  weight-only, 8/4/3/2-bit codes with one scale per output channel (or per `group` input
 *             rows), routed experts only (MoQE) or every matrix; per expert: the relative weight error
 *             ‖W_e − Ŵ_e‖ / ‖W_e‖ over the expert's matrices.
 *   prune     remove round(ratio · E) experts of every MoE layer by a calibration score (REAP,
 *             frequency, EAN, …, random); per expert: that score (removed experts are marked).
 *   merge     MC-SMoE: group the experts around the G most used ones by router-logit similarity, align
 *             hidden units, average with usage weights and bind every slot of a group to the merged
 *             expert; per expert: its usage frequency on the calibration text (and its group).
 *   steer     SteerMoE: force / block the experts whose activation rate differs most between two texts
 *             (router-logit edits, no weight changes); per expert: Δ = rate on "toward" − rate on "away",
 *             and the perplexity of both texts without and with the edits.
 *   moe-pruner  zero the fraction `sparsity` of every expert neuron's weights by |W| · ‖g x‖ (optionally
 *             followed by expert-wise distillation from the unpruned experts); per expert: the relative
 *             weight change ‖W_e − W'_e‖ / ‖W_e‖.
 *   eep       EEP: an evolutionary search for the experts to keep, judged by the loss on calibration
 *             windows (REAP's plan is one starting candidate), optionally followed by the merging phase;
 *             per expert: the REAP score (removed experts are marked).
 *   scmoe     SCMoE self-contrast decoding (no weight change): greedy continuations of a validation
 *             prompt without and with the contrast against the weak rank-r routing; the perplexity of
 *             the strong routing ("before") and of the weak one ("after"); per expert: the share of
 *             tokens the weak routing sends to it.
 *
 * Calibration uses the train split of the page's data, perplexity its validation split: non-overlapping
 * windows of the checkpoint's sequence length, the same windows before and after. Perplexity is per byte.
 * The equations and the papers are in docs/compression.md.
 */
import {
  collectExpertTargets,
  distilExperts,
  eepMerge,
  eepSearch,
  moePrune,
  planPruning,
  scmoeContrast,
  sliceExperts,
  PRUNE_SCORES,
  type PruneScore,
  pruneExperts,
  QUANT_BITS,
  quantizedSize,
  quantizedTensors,
  quantizeModel,
  dequantizeTensor,
  loadQuantizedState,
  mergeExperts,
  moeLayers,
  RoutingObserver,
  planSteering,
  routedExpertBanks,
  steerEdits,
  steerScores,
  windowBatches,
  windowsLoss,
} from '@moelab/compress';
import {
  buildModel,
  type CheckpointConfig,
  checkpointConfigText,
  encodeCheckpoint,
  type ForwardContext,
  forwardContext,
  generateTokens,
  type LanguageModel,
  MoelabError,
  type Module,
  type PackedBits,
  type Registry,
  Rng,
  readSafetensors,
  tf,
  writeSafetensors,
} from '@moelab/core';
import { loadCheckpointFiles, type UploadedFile } from './checkpoint.js';
import { type TextData, TextTokens } from './data.js';

type Model = Module & LanguageModel;

export type CompressMethod =
  | { kind: 'quantize'; bits: number; group?: number; scope: 'experts' | 'all' }
  | { kind: 'prune'; score: PruneScore; ratio: number; preserveSuper?: boolean; seed?: number }
  | { kind: 'merge'; groups: number; align?: boolean }
  | { kind: 'steer'; toward: TextData; away: TextData; activate: number; deactivate: number }
  | { kind: 'moe-pruner'; sparsity: number; distilSteps?: number }
  | { kind: 'eep'; ratio: number; population?: number; generations?: number; mergeGenerations?: number }
  | { kind: 'scmoe'; beta: number; rank?: number; tokens?: number };

export const COMPRESS_KINDS = ['quantize', 'prune', 'merge', 'steer', 'moe-pruner', 'eep', 'scmoe'] as const;
export { PRUNE_SCORES, QUANT_BITS };

export interface CompressRequest {
  files: UploadedFile[];
  method: CompressMethod;
  data: TextData;
  /** Calibration tokens (train split; prune and merge). Default 4096. */
  calibTokens?: number;
  /** Evaluation tokens (validation split). Default 4096. */
  evalTokens?: number;
  batchSize?: number;
}

export interface ModelSize {
  parameters: number;
  /** Bytes of model.safetensors. */
  bytes: number;
  /** Parameters that differ (merged experts share one copy per group). */
  distinctParameters: number;
}

export interface ExpertScores {
  layer: string;
  values: number[];
  /** Pruning: whether each expert was kept. */
  kept?: boolean[];
  /** Merging: the group index of each expert. */
  group?: number[];
  /** Steering: forced, blocked or left alone. */
  steer?: ('force' | 'block' | null)[];
}

export interface Perplexity {
  before: number;
  after: number;
  /** The text's name (its validation split). */
  data: string;
  tokens: number;
}

export interface CompressResult {
  /** One line: what was done. */
  summary: string;
  /** What the per-expert values are. */
  score: string;
  size: { before: ModelSize; after: ModelSize };
  perplexity: Perplexity;
  /** Steering: the perplexity of the text steered away from. */
  otherPerplexity?: Perplexity;
  /** SCMoE: greedy continuations of a validation prompt without and with the contrast. */
  generated?: { prompt: string; greedy: string; contrast: string };
  experts: ExpertScores[];
  /** The compressed checkpoint (for quantize, the packed format `moelab` reads). */
  files: { name: string; bytes: Uint8Array }[];
  /** The compressed model as an ordinary float checkpoint a run of the page loads. */
  runFiles: { name: string; bytes: Uint8Array }[];
}

/** Non-overlapping windows [seqLen + 1] of a split, at most `maxTokens` targets, or a one-line error. */
export function textWindows(data: TextData, split: 'train' | 'val', seqLen: number, maxTokens: number): Int32Array[] {
  const ids = new TextTokens(data).tokens(split);
  const out: Int32Array[] = [];
  for (let at = 0; at + seqLen + 1 <= ids.length && (out.length + 1) * seqLen <= maxTokens; at += seqLen) out.push(ids.subarray(at, at + seqLen + 1));
  if (out.length === 0)
    throw new MoelabError(
      `the ${split} split has ${ids.length} tokens, fewer than one window of ${seqLen + 1} (or the token budget ${maxTokens} is below ${seqLen})`,
      data.name,
    );
  return out;
}

/** Per-byte perplexity of the windows' next-token predictions (with forward-context extras: steering edits). */
export function windowsPerplexity(model: Model, windows: Int32Array[], batchSize: number, extra: Partial<ForwardContext> = {}): number {
  return Math.exp(windowsLoss(model, windows, batchSize, extra));
}

/** One observed pass over the calibration windows: every routing statistic the methods need. */
export function calibrate(model: Model, windows: Int32Array[], batchSize: number, domain: string, observer = new RoutingObserver()): RoutingObserver {
  for (const batch of windowBatches(windows, batchSize)) {
    observer.observeLoss(model, batch, { domain });
    batch.dispose();
  }
  return observer;
}

function size(model: Module, bytes: number, distinct = model.parameterCount()): ModelSize {
  return { parameters: model.parameterCount(), bytes, distinctParameters: distinct };
}

const checkpointPair = (configJson: string, weights: Uint8Array) => [
  { name: 'config.json', bytes: new TextEncoder().encode(configJson) },
  { name: 'model.safetensors', bytes: weights },
];

function ordinaryCheckpoint(model: Module, config: CheckpointConfig, spec = config.spec) {
  const { configJson, weights } = encodeCheckpoint(model, { spec, step: config.step, seed: config.seed ?? 0, train: config.train });
  return { configJson, weights };
}

function checkMethod(m: CompressMethod): void {
  if (m.kind === 'quantize') {
    if (!(QUANT_BITS as readonly number[]).includes(m.bits)) throw new MoelabError(`bits must be one of ${QUANT_BITS.join(', ')} (got ${m.bits})`, 'bits');
  } else if (m.kind === 'prune') {
    if (!(PRUNE_SCORES as readonly string[]).includes(m.score))
      throw new MoelabError(`unknown pruning score "${m.score}"; one of ${PRUNE_SCORES.join(', ')}`, 'score');
    if (!(m.ratio > 0 && m.ratio < 1)) throw new MoelabError(`the ratio must be in (0, 1), got ${m.ratio}`, 'ratio');
  } else if (m.kind === 'merge') {
    if (!Number.isInteger(m.groups) || m.groups < 1) throw new MoelabError(`groups must be a positive integer, got ${m.groups}`, 'groups');
  } else if (m.kind === 'steer') {
    if (m.toward.name === m.away.name) throw new MoelabError(`steer toward and away from two different texts (both are "${m.toward.name}")`, 'away');
  } else if (m.kind === 'moe-pruner') {
    if (!(m.sparsity > 0 && m.sparsity < 1)) throw new MoelabError(`the sparsity must be in (0, 1), got ${m.sparsity}`, 'sparsity');
    if (!(Number.isInteger(m.distilSteps ?? 0) && (m.distilSteps ?? 0) >= 0))
      throw new MoelabError(`the distillation steps must be a non-negative integer, got ${m.distilSteps}`, 'distil steps');
  } else if (m.kind === 'eep') {
    if (!(m.ratio > 0 && m.ratio < 1)) throw new MoelabError(`the ratio must be in (0, 1), got ${m.ratio}`, 'ratio');
    if (!(Number.isInteger(m.mergeGenerations ?? 0) && (m.mergeGenerations ?? 0) >= 0))
      throw new MoelabError(`the merging generations must be a non-negative integer, got ${m.mergeGenerations}`, 'merge generations');
  } else if (m.kind === 'scmoe') {
    if (!(m.beta >= 0)) throw new MoelabError(`the contrast weight beta must be >= 0, got ${m.beta}`, 'beta');
  } else throw new MoelabError(`unknown method "${(m as { kind: string }).kind}"; one of ${COMPRESS_KINDS.join(', ')}`, 'method');
}

/**
 * Run one compression method on checkpoint files. `progress` hears each phase (the worker posts them).
 * The inputs are never changed; every model built here is disposed.
 */
export function compressInPage(registry: Registry, request: CompressRequest, progress: (phase: string) => void = () => {}): CompressResult {
  checkMethod(request.method);
  const { model, config } = loadCheckpointFiles<Model>(request.files, registry);
  const disposables: Module[] = [model];
  try {
    const seqLen = Math.min(model.contextLength, config.train?.seqLen ?? model.contextLength);
    const batchSize = request.batchSize ?? 8;
    if (request.method.kind === 'steer') return steer(model, config, request.method, { seqLen, batchSize, ...request }, progress);
    if (request.method.kind === 'scmoe') return scmoe(model, config, request.method, { seqLen, batchSize, ...request }, progress);
    const evalWindows = textWindows(request.data, 'val', seqLen, request.evalTokens ?? 4096);
    const weightsBytes = request.files.find((f) => f.name.endsWith('.safetensors'))?.bytes.length ?? ordinaryCheckpoint(model, config).weights.length;
    const before = size(model, weightsBytes);
    progress('perplexity before');
    const pplBefore = windowsPerplexity(model, evalWindows, batchSize);
    const done = (r: Omit<CompressResult, 'perplexity'>, after: Model): CompressResult => {
      progress('perplexity after');
      return {
        ...r,
        perplexity: {
          before: pplBefore,
          after: windowsPerplexity(after, evalWindows, batchSize),
          data: request.data.name,
          tokens: evalWindows.length * seqLen,
        },
      };
    };
    const m = request.method;
    if (m.kind === 'quantize') {
      progress('quantizing');
      const q = quantizeModel(model, { bits: m.bits as PackedBits, group: m.group ?? 0, targets: m.scope === 'all' ? ['**'] : undefined });
      const { tensors, metadata } = quantizedTensors(q);
      const weights = writeSafetensors(tensors, { ...metadata, format: config.format, step: String(config.step) });
      // What every backend but moelab-cpu runs: the codes dequantized at load.
      const loaded = buildModel<Model>(config.spec, registry, config.seed ?? 0);
      disposables.push(loaded);
      loadQuantizedState(loaded, readSafetensors(weights), { packed: false });
      const experts: ExpertScores[] = [];
      for (const { path, layer, bank } of routedExpertBanks(model)) {
        const E = bank.numExperts;
        const num = new Float64Array(E);
        const den = new Float64Array(E);
        for (const [name, v] of bank.namedParameters()) {
          const p = q.packed.get(`${path}.${name}`);
          if (!p || v.shape[0] !== E) continue;
          const w = v.dataSync() as Float32Array;
          const wHat = dequantizeTensor(p);
          const per = w.length / E;
          for (let e = 0; e < E; e++)
            for (let i = e * per; i < (e + 1) * per; i++) {
              num[e]! += (w[i]! - wHat[i]!) ** 2;
              den[e]! += w[i]! ** 2;
            }
        }
        if (den.some((d) => d > 0)) experts.push({ layer: layer.path, values: Array.from(num, (n, e) => (den[e]! > 0 ? Math.sqrt(n / den[e]!) : 0)) });
      }
      const s = quantizedSize(q.packed);
      const after = ordinaryCheckpoint(loaded, config);
      return done(
        {
          summary: `${q.packed.size} ${m.scope === 'all' ? '' : 'expert '}matrices to ${q.options.bits} bits (${q.options.group ? `a scale per ${q.options.group} input rows` : 'a scale per output channel'}): ${s.floatBytes.toLocaleString('en-US')} float32 bytes -> ${s.packedBytes.toLocaleString('en-US')} packed`,
          score: 'relative weight error ‖W − Ŵ‖ / ‖W‖',
          size: { before, after: size(loaded, weights.length) },
          experts,
          files: checkpointPair(checkpointConfigText(config), weights),
          runFiles: checkpointPair(after.configJson, after.weights),
        },
        loaded,
      );
    }
    const calibWindows = textWindows(request.data, 'train', seqLen, request.calibTokens ?? 4096);
    progress('calibrating');
    if (m.kind === 'moe-pruner') {
      // Weights inside the experts, in place on `model` (its size and perplexity were measured above).
      const observer = calibrate(model, calibWindows, batchSize, request.data.name, new RoutingObserver({ hidden: true }));
      const teacher = m.distilSteps ? collectExpertTargets(model, calibWindows, { batchSize }) : undefined;
      const banks = routedExpertBanks(model);
      const original = banks.map(({ bank }) => bank.namedParameters().map(([, v]) => Float32Array.from(v.dataSync())));
      progress('pruning');
      const report = moePrune(observer, { spec: config.spec, model }, { sparsity: m.sparsity });
      let distilled = '';
      if (teacher) {
        progress('distilling');
        const d = distilExperts(model, teacher, { steps: m.distilSteps! });
        distilled = `; ${m.distilSteps} steps of expert-wise distillation: loss ${d.losses[0]!.toExponential(2)} -> ${d.losses.at(-1)!.toExponential(2)}`;
      }
      const experts: ExpertScores[] = banks.map(({ layer, bank }, i) => {
        const E = bank.numExperts;
        const num = new Float64Array(E);
        const den = new Float64Array(E);
        bank.namedParameters().forEach(([, v], j) => {
          if (v.shape[0] !== E) return;
          const w = original[i]![j]!;
          const now = v.dataSync();
          const per = w.length / E;
          for (let k = 0; k < w.length; k++) {
            const e = Math.floor(k / per);
            num[e]! += (w[k]! - now[k]!) ** 2;
            den[e]! += w[k]! ** 2;
          }
        });
        return { layer: layer.path, values: Array.from(num, (n, e) => (den[e]! > 0 ? Math.sqrt(n / den[e]!) : 0)) };
      });
      const zeroed = report.tensors.reduce((a, t) => a + t.zeroed, 0);
      const total = report.tensors.reduce((a, t) => a + t.total, 0);
      const out = ordinaryCheckpoint(model, config);
      return done(
        {
          summary: `MoE-Pruner: zeroed ${zeroed.toLocaleString('en-US')} of ${total.toLocaleString('en-US')} expert weights (${((100 * zeroed) / total).toFixed(1)} %; the zeros are stored densely, so the file keeps its size)${distilled}`,
          score: 'relative weight change ‖W − W′‖ / ‖W‖',
          size: { before, after: size(model, out.weights.length, model.parameterCount() - zeroed) },
          experts,
          files: checkpointPair(out.configJson, out.weights),
          runFiles: checkpointPair(out.configJson, out.weights),
        },
        model,
      );
    }
    if (m.kind === 'eep') {
      const observer = calibrate(model, calibWindows, batchSize, request.data.name);
      const source = { spec: config.spec, model };
      const reap = planPruning(observer, source, { method: 'reap', ratio: m.ratio });
      const windows = calibWindows.slice(0, Math.max(1, Math.floor(2048 / seqLen)));
      progress('searching');
      const found = eepSearch(model, windows, {
        ratio: m.ratio,
        population: m.population ?? 8,
        generations: m.generations ?? 4,
        batchSize,
        init: [reap.keep],
      });
      let merged = '';
      let result: { spec: typeof config.spec; model: Model };
      if (m.mergeGenerations) {
        progress('merging');
        const r = eepMerge(registry, source, windows, { keep: found.keep, population: m.population ?? 8, generations: m.mergeGenerations, batchSize });
        merged = `; merging phase ${r.startLoss.toFixed(4)} -> ${r.loss.toFixed(4)}`;
        result = r;
      } else result = sliceExperts(registry, source, found.keep);
      disposables.push(result.model);
      const out = ordinaryCheckpoint(result.model, config, result.spec);
      const experts = [...reap.scores].map(([layer, scores]) => {
        const keep = found.keep.get(layer) ?? [];
        return { layer, values: Array.from(scores), kept: Array.from(scores, (_, e) => keep.includes(e)) };
      });
      return done(
        {
          summary: `EEP kept ${[...found.keep.values()].map((k) => k.length).join(' / ')} experts per layer after ${found.evaluations} candidates; search loss ${found.baseLoss.toFixed(4)} unpruned, ${found.history[0]!.toFixed(4)} -> ${found.loss.toFixed(4)} pruned${merged}`,
          score: 'REAP score (hollow: removed by the search)',
          size: { before, after: size(result.model, out.weights.length) },
          experts,
          files: checkpointPair(out.configJson, out.weights),
          runFiles: checkpointPair(out.configJson, out.weights),
        },
        result.model,
      );
    }
    const observer = calibrate(model, calibWindows, batchSize, request.data.name);
    if (m.kind === 'prune') {
      progress('pruning');
      const pruned = pruneExperts(
        registry,
        observer,
        { spec: config.spec, model },
        { method: m.score, ratio: m.ratio, seed: m.seed ?? 0, preserveSuper: !!m.preserveSuper },
      );
      disposables.push(pruned.model);
      const out = ordinaryCheckpoint(pruned.model, config, pruned.spec);
      const experts = [...pruned.plan.scores].map(([layer, scores]) => {
        const keep = pruned.plan.keep.get(layer) ?? [];
        return { layer, values: Array.from(scores), kept: Array.from(scores, (_, e) => keep.includes(e)) };
      });
      const removed = experts.reduce((n, l) => n + l.kept.filter((k) => !k).length, 0);
      return done(
        {
          summary: `removed ${removed} experts by ${m.score} (ratio ${m.ratio}), calibrated on ${calibWindows.length * seqLen} tokens of ${request.data.name}`,
          score: `${m.score} score`,
          size: { before, after: size(pruned.model, out.weights.length) },
          experts,
          files: checkpointPair(out.configJson, out.weights),
          runFiles: checkpointPair(out.configJson, out.weights),
        },
        pruned.model,
      );
    }
    // Merge: in place on `model` (its weights were measured above), every slot of a group bound to one expert.
    progress('merging');
    const layers = moeLayers(model);
    const usage = new Map(layers.map((l) => [l.path, Array.from(observer.layer(l.path).load())]));
    const report = mergeExperts(registry, observer, { spec: config.spec, model }, { groups: m.groups, align: m.align ?? true });
    let shared = 0;
    const experts: ExpertScores[] = [];
    for (const l of layers) {
      const groups = report.groups.get(l.path);
      if (!groups) continue;
      shared += (l.numExperts - groups.length) * l.layer.experts.parametersPerExpert();
      const group = new Array<number>(l.numExperts).fill(-1);
      groups.forEach((g, gi) => {
        for (const e of g) group[e] = gi;
      });
      experts.push({ layer: l.path, values: usage.get(l.path) ?? [], group });
    }
    const out = ordinaryCheckpoint(model, config);
    return done(
      {
        summary: `merged every MoE layer's experts into ${m.groups} groups (${m.align === false ? 'plain average' : 'MC-SMoE, aligned'}); every slot of a group holds the merged expert, so the file keeps its size and ${shared.toLocaleString('en-US')} parameters are duplicates`,
        score: 'usage frequency on the calibration text (colour: merged group)',
        size: { before, after: size(model, out.weights.length, model.parameterCount() - shared) },
        experts,
        files: checkpointPair(out.configJson, out.weights),
        runFiles: checkpointPair(out.configJson, out.weights),
      },
      model,
    );
  } finally {
    for (const d of disposables) d.dispose();
  }
}

/**
 * SteerMoE: the experts whose activation rate differs most between the two texts (train splits) are
 * forced (Δ > 0) or blocked (Δ < 0) by router-logit edits at inference; the weights do not change. The
 * result is the steering file `moelab eval/generate --steer` reads, and the perplexity of both texts'
 * validation splits without and with the edits.
 */
function steer(
  model: Model,
  config: CheckpointConfig,
  m: Extract<CompressMethod, { kind: 'steer' }>,
  o: { seqLen: number; batchSize: number; calibTokens?: number; evalTokens?: number; files: UploadedFile[] },
  progress: (phase: string) => void,
): CompressResult {
  progress('calibrating on both texts');
  const observer = new RoutingObserver({ outputs: false, inputs: false });
  for (const t of [m.toward, m.away]) calibrate(model, textWindows(t, 'train', o.seqLen, o.calibTokens ?? 4096), o.batchSize, t.name, observer);
  const topK = new Map<string, number>();
  for (const l of moeLayers(model)) topK.set(l.path, l.layer.router.expertsPerToken);
  const scores = steerScores(observer, m.toward.name, m.away.name);
  const file = planSteering(scores, m.toward.name, m.away.name, { activate: m.activate, deactivate: m.deactivate, topK });
  const edits = { routerLogitEdits: steerEdits(file) };
  progress('perplexity without and with steering');
  const measure = (t: TextData): Perplexity => {
    const windows = textWindows(t, 'val', o.seqLen, o.evalTokens ?? 4096);
    return {
      before: windowsPerplexity(model, windows, o.batchSize),
      after: windowsPerplexity(model, windows, o.batchSize, edits),
      data: t.name,
      tokens: windows.length * o.seqLen,
    };
  };
  const experts: ExpertScores[] = [...observer.layers.keys()].map((layer) => {
    const rows = scores.filter((s) => s.layer === layer).sort((a, b) => a.expert - b.expert);
    const l = file.layers[layer];
    return {
      layer,
      values: rows.map((r) => r.delta),
      steer: rows.map((r) => (l?.force.includes(r.expert) ? 'force' : l?.block.includes(r.expert) ? 'block' : null)),
    };
  });
  const forced = Object.values(file.layers).reduce((n, l) => n + l.force.length, 0);
  const blocked = Object.values(file.layers).reduce((n, l) => n + l.block.length, 0);
  const bytes = o.files.find((f) => f.name.endsWith('.safetensors'))?.bytes.length ?? ordinaryCheckpoint(model, config).weights.length;
  const same = size(model, bytes);
  return {
    summary: `steering toward "${m.toward.name}", away from "${m.away.name}": ${forced} experts forced, ${blocked} blocked (router-logit edits at inference; the weights do not change)`,
    score: `activation rate on "${m.toward.name}" minus on "${m.away.name}" (coloured: forced, hollow: blocked)`,
    size: { before: same, after: same },
    perplexity: measure(m.toward),
    otherPerplexity: measure(m.away),
    experts,
    files: [{ name: 'steer.json', bytes: new TextEncoder().encode(`${JSON.stringify(file, null, 2)}\n`) }],
    runFiles: [],
  };
}

/**
 * SCMoE: the model is unchanged; it decodes a validation prompt greedily with and without the contrast
 * against the weak routing (each token sent to the expert at 0-based rank r, weight 1), and measures
 * the perplexity of the strong and of the weak routing on the validation windows.
 */
function scmoe(
  model: Model,
  config: CheckpointConfig,
  m: Extract<CompressMethod, { kind: 'scmoe' }>,
  o: { seqLen: number; batchSize: number; evalTokens?: number; files: UploadedFile[]; data: TextData },
  progress: (phase: string) => void,
): CompressResult {
  const contrast = scmoeContrast(model, { beta: m.beta, weakRank: m.rank ?? 2 });
  const windows = textWindows(o.data, 'val', o.seqLen, o.evalTokens ?? 4096);
  progress('perplexity of the strong and the weak routing');
  const weak = { routerLogitEdits: contrast.routerLogitEdits };
  const perplexity: Perplexity = {
    before: windowsPerplexity(model, windows, o.batchSize),
    after: windowsPerplexity(model, windows, o.batchSize, weak),
    data: o.data.name,
    tokens: windows.length * o.seqLen,
  };
  const observer = new RoutingObserver({ outputs: false, inputs: false });
  for (const batch of windowBatches(windows, o.batchSize)) {
    const { observed, ...hooks } = observer.hooks({ domain: o.data.name });
    const ctx = forwardContext(new Rng(0), false, { ...hooks, ...weak });
    const [B, T1] = batch.shape;
    tf.tidy(() => {
      model.forward(tf.slice(batch, [0, 0], [B, T1 - 1]), ctx);
    });
    observer.finish(ctx, { domain: o.data.name }, observed);
    batch.dispose();
  }
  const experts: ExpertScores[] = [...observer.layers.values()].map((s) => ({ layer: s.layer, values: Array.from(s.count, (c) => c / Math.max(1, s.tokens)) }));
  progress('decoding');
  const prompt = Array.from(windows[0]!.subarray(0, Math.min(32, o.seqLen)));
  const bytes = (ids: number[]) => new TextDecoder().decode(Uint8Array.from(ids));
  const decode = (extra: Partial<Parameters<typeof generateTokens>[2]>) =>
    bytes(generateTokens(model, prompt, { maxNewTokens: m.tokens ?? 48, temperature: 0, ...extra }));
  const bytesOf = o.files.find((f) => f.name.endsWith('.safetensors'))?.bytes.length ?? ordinaryCheckpoint(model, config).weights.length;
  const same = size(model, bytesOf);
  return {
    summary: `SCMoE (beta ${m.beta}, weak routing: the rank-${m.rank ?? 2} expert, 0-based): decoding changes, the weights do not; "after" is the perplexity of the weak routing the contrast subtracts`,
    score: `share of tokens the weak (rank ${m.rank ?? 2}) routing sends to each expert`,
    size: { before: same, after: same },
    perplexity,
    generated: { prompt: bytes(prompt), greedy: decode({}), contrast: decode({ contrast }) },
    experts,
    files: [],
    runFiles: [],
  };
}
