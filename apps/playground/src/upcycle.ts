/**
 * Upcycling in the page (no DOM here; the view is upcycle-view.ts): dense sources from checkpoint
 * files (the CLI's config.json + model.safetensors pair, e.g. a run of the page saved or exported),
 * one registered upcycler run on them (`@moelab/upcycle`'s `upcycle`: tensor surgery, never
 * training), and the result as checkpoint files a run can load and train on.
 *
 * Roles: the first source is the seed, the others are the experts branched from it (BTX, BAM, Nexus);
 * sparse upcycling and the split methods take the seed alone.
 */
import {
  buildModel,
  encodeCheckpoint,
  type LanguageModel,
  loadState,
  MoelabError,
  type Module,
  type NodeSpec,
  parseCheckpointConfig,
  type Registry,
  Rng,
  readSafetensors,
  type TrainConfig,
} from '@moelab/core';
import { groupedProvenance, type ProvenanceRow, provenanceRows, type UpcycleResult, type UpcycleSource, upcycle } from '@moelab/upcycle';
import { pickCheckpointFiles, type UploadedFile } from './checkpoint.js';

/** A dense source from checkpoint files (config.json + model.safetensors). */
export function sourceFromFiles(name: string, files: UploadedFile[]): UpcycleSource {
  const { config, weights } = pickCheckpointFiles(files);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(config.bytes);
  } catch {
    throw new MoelabError('config.json is not UTF-8 text', config.name);
  }
  const cfg = parseCheckpointConfig(text, config.name);
  const file = readSafetensors(weights.bytes, weights.name);
  const map = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [n, t] of file.tensors) map.set(n, { shape: t.shape, data: t.data instanceof Float32Array ? t.data : Float32Array.from(t.data) });
  return { name, spec: cfg.spec, weights: map, step: cfg.step };
}

/** The upcycler node: its name plus the options (a JSON object) the person typed. */
export function methodNode(name: string, optionsJson: string): NodeSpec {
  let options: unknown;
  try {
    options = optionsJson.trim() ? JSON.parse(optionsJson) : {};
  } catch (e) {
    throw new MoelabError(`options are not JSON: ${(e as Error).message}`, 'upcycler options');
  }
  if (!options || typeof options !== 'object' || Array.isArray(options)) throw new MoelabError('options must be a JSON object', 'upcycler options');
  return { ...(options as Record<string, unknown>), type: name };
}

/** `count` windows of `len` tokens from `tokens` (calibration text, domain samples), seeded. */
function windows(tokens: Int32Array, count: number, len: number, seed: number): Int32Array[] {
  const rng = new Rng(seed);
  const n = Math.min(len, tokens.length);
  return Array.from({ length: count }, () => {
    const start = rng.int(Math.max(1, tokens.length - n + 1));
    return tokens.slice(start, start + n);
  });
}

export interface PageUpcycle {
  result: UpcycleResult;
  /** Provenance with layers folded into `*` (one row per op and source pattern). */
  rows: (ProvenanceRow & { count: number })[];
}

/**
 * Run upcycler `method` on the sources (first = seed, rest = experts). `text` (the page's training
 * tokens) supplies the calibration windows of the split methods and the domain samples of Nexus's
 * embedders (different windows per expert: in the page every expert sees the same text, so Nexus's
 * domain embeddings only differ by sampling).
 */
export function upcycleSources(registry: Registry, method: NodeSpec, sources: UpcycleSource[], text: Int32Array, seed = 0): PageUpcycle {
  if (sources.length === 0) throw new MoelabError('add a dense source first (a run of the page, or checkpoint files)');
  const [first, ...rest] = sources;
  const ctx = (first!.spec as { contextLength?: number }).contextLength ?? 64;
  const result = upcycle(
    registry,
    method,
    {
      seed: first,
      experts: rest.length ? rest : undefined,
      domainSamples: rest.length ? rest.map((_, i) => windows(text, 16, ctx, seed + 1 + i)) : undefined,
      calibration: windows(text, 16, ctx, seed),
    },
    { seed },
  );
  return { result, rows: groupedProvenance(provenanceRows(result)) };
}

/** The upcycled model as checkpoint files (step 0), ready to load into a run and train. */
export function upcycledCheckpoint(registry: Registry, result: UpcycleResult, train: Partial<TrainConfig>): { configJson: string; weights: Uint8Array } {
  const model = buildModel<Module & LanguageModel>(result.spec, registry, 0);
  try {
    loadState(model, result.weights, { source: `upcycler ${result.report.method}` });
    const { configJson, weights } = encodeCheckpoint(model, { spec: result.spec, step: 0, seed: train.seed ?? 0, train });
    return { configJson, weights };
  } finally {
    model.dispose();
  }
}
