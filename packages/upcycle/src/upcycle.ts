/**
 * `upcycle(registry, method, input)`: run one upcycler and hand back a complete, checked model.
 *
 * 1. The method node (`"btx"` or `{ type: "btx", ... }`) is resolved from the registry's `upcycler` kind
 *    and validated (unknown names suggest close ones; bad options name their JSON path).
 * 2. The upcycler's `run` returns the new spec, the tensors it built and their provenance.
 * 3. The new spec is built (seeded): every tensor the upcycler did not supply keeps the builder's
 *    initialisation and is recorded as `new`; then all weights are loaded strictly into the built model,
 *    which proves that spec and weights agree by name and shape, and the model is counted.
 * 4. With `resumeOptimizerState`, the upcycler is replayed on the sources' Adam moments (new tensors get
 *    zero moments) and the step counter is restored.
 */
import {
  buildModel,
  buildNode,
  type LanguageModel,
  loadState,
  type Module,
  MoelabError,
  modelSummary,
  type NodeSpec,
  type Registry,
  Rng,
  warn,
} from '@moelab/core';
import type { UpcycleDraft, UpcycleInput, UpcycleResult, UpcycleSource, UpcycleTools, Upcycler } from './contract.js';
import { numel, type WeightMap, zerosTensor } from './weights.js';

export interface UpcycleOptions {
  /** Seed of the router initialisation and every other random choice (default 0). */
  seed?: number;
  /** Carry the sources' AdamW moments over (copied / averaged like their tensors, zeros for new ones). */
  resumeOptimizerState?: boolean;
}

/** The name of a method node. */
export function methodName(method: string | NodeSpec): string {
  return typeof method === 'string' ? method : String((method as { type?: unknown }).type);
}

/** The sources' weights replaced by one of their Adam moments (`exp_avg` or `exp_avg_sq`). */
function momentSource(s: UpcycleSource, which: 'exp_avg' | 'exp_avg_sq', role: string): UpcycleSource {
  if (!s.optimizer)
    throw new MoelabError(`resumeOptimizerState needs the optimizer state of every source, and ${role} (${s.name}) has none (optimizer.safetensors)`);
  const weights: WeightMap = new Map();
  for (const [name, t] of s.weights) {
    const m = s.optimizer.get(`${which}.${name}`);
    // Buffers (non-trainable) have no moments: zeros keep the replay's arithmetic defined.
    weights.set(name, m ? { shape: m.shape.slice(), data: Float32Array.from(m.data as ArrayLike<number>) } : zerosTensor(t.shape));
  }
  return { ...s, weights };
}

function momentInput(input: UpcycleInput, which: 'exp_avg' | 'exp_avg_sq'): UpcycleInput {
  return {
    ...input,
    seed: input.seed && momentSource(input.seed, which, 'the seed'),
    experts: input.experts?.map((e, i) => momentSource(e, which, `experts[${i}]`)),
    base: input.base && momentSource(input.base, which, 'the base model'),
  };
}

function makeTools(registry: Registry, seed: number, warnings: string[], moments: boolean): UpcycleTools {
  return {
    registry,
    seed,
    moments,
    fresh(name, shape, std) {
      if (moments) return zerosTensor(shape);
      return { shape: shape.slice(), data: Rng.derive(seed, 'upcycle', name).normalArray(numel(shape), std) };
    },
    warn(message) {
      if (moments) return;
      warnings.push(message);
      warn(message);
    },
  };
}

function sourcesOf(input: UpcycleInput): UpcycleSource[] {
  return [input.base, input.seed, ...(input.experts ?? [])].filter((s): s is UpcycleSource => !!s);
}

/**
 * Run the upcycler `method` on `input`. Throws a one-line MoelabError on bad input (unknown method,
 * missing or mismatched sources, bad options); warnings (e.g. unrelated sources) go to core's `warn`
 * and into `report.warnings`.
 */
export function upcycle(registry: Registry, method: string | NodeSpec, input: UpcycleInput, options: UpcycleOptions = {}): UpcycleResult {
  const t0 = Date.now();
  const seed = options.seed ?? 0;
  const upcycler = buildNode<Upcycler>(registry, 'upcycler', method, 'upcycler', seed);
  const name = methodName(method);
  const resume = options.resumeOptimizerState ?? upcycler.resumeOptimizerState ?? false;
  if (resume && !upcycler.carriesOptimizer)
    throw new MoelabError(
      `${name} cannot carry optimizer state over (its tensors are not copies or averages of the sources'); upcycle without resumeOptimizerState`,
      'upcycler.resumeOptimizerState',
    );
  const warnings: string[] = [];
  const draft: UpcycleDraft = upcycler.run(input, makeTools(registry, seed, warnings, false));

  // Build the new model: proves the spec, supplies the builder's init for tensors the upcycler left out.
  let model: Module & LanguageModel;
  try {
    model = buildModel(draft.spec, registry, seed);
  } catch (e) {
    if (e instanceof MoelabError) throw new MoelabError(`the upcycled spec does not build: ${e.message}`, `upcycler ${name}`);
    throw e;
  }
  try {
    const state = new Map(model.stateDict());
    for (const n of draft.weights.keys())
      if (!state.has(n)) throw new MoelabError(`upcycler ${name} produced tensor "${n}", which the upcycled spec does not have`, 'upcycler');
    const weights: WeightMap = new Map();
    const provenance = new Map(draft.provenance);
    for (const [n, v] of state) {
      const t = draft.weights.get(n);
      if (t) {
        weights.set(n, t);
        if (!provenance.has(n)) throw new MoelabError(`upcycler ${name} gave no provenance for tensor "${n}"`, 'upcycler');
      } else {
        weights.set(n, { shape: v.shape.slice(), data: Float32Array.from(v.dataSync()) });
        const told = provenance.get(n);
        if (told && told.op !== 'new') throw new MoelabError(`upcycler ${name} recorded "${n}" as ${told.op} but supplied no tensor`, 'upcycler');
        if (!told) provenance.set(n, { op: 'new', from: [], note: 'builder initialisation' });
      }
    }
    loadState(model, weights, { source: `upcycler ${name}` });
    const summary = modelSummary(model);
    const sources = sourcesOf(input);
    let source: UpcycleResult['report']['source'];
    const first = input.seed ?? input.base ?? input.experts?.[0];
    if (first) {
      const m = buildModel(first.spec, registry, 0);
      const s = modelSummary(m);
      m.dispose();
      source = { name: first.name, totalParams: s.parameters, activeParams: s.activeParameters, forwardFlopsPerToken: s.forwardFlopsPerToken };
    }

    let optimizer: UpcycleResult['optimizer'];
    let step = 0;
    if (resume) {
      optimizer = new Map();
      const trainable = model.namedParameters().filter(([, v]) => v.trainable);
      for (const which of ['exp_avg', 'exp_avg_sq'] as const) {
        const replay = upcycler.run(momentInput(input, which), makeTools(registry, seed, [], true));
        for (const [n, v] of trainable) {
          const t = replay.weights.get(n);
          optimizer.set(`${which}.${n}`, t ?? zerosTensor(v.shape));
        }
      }
      step = Math.max(0, ...sources.map((s) => Number(s.optimizer?.get('step')?.data[0] ?? s.step ?? 0)));
      optimizer.set('step', { shape: [1], data: Int32Array.of(step), dtype: 'I32' });
    }
    return {
      spec: draft.spec,
      weights,
      provenance,
      report: {
        method: name,
        totalParams: summary.parameters,
        activeParams: summary.activeParameters,
        forwardFlopsPerToken: summary.forwardFlopsPerToken,
        source,
        notes: draft.notes,
        warnings,
        ms: Date.now() - t0,
      },
      optimizer,
      step,
    };
  } finally {
    model.dispose();
  }
}

/** The names of the registered upcyclers. */
export function upcyclerNames(registry: Registry): string[] {
  return registry.names('upcycler');
}
