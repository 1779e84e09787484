/**
 * Conversion plans and drivers between moelab checkpoints and Hugging Face layouts, without any file
 * system: a plan says which tensors go where (names, shapes, the config on the other side); a driver
 * reads tensors one link at a time from a {@link TensorSource} and hands each converted tensor to a
 * callback, so a caller that streams (packages/node) holds one link's tensors at a time, and a caller
 * in memory (the browser, the tests) passes Maps.
 */
import { MoelabError, type NodeSpec, type Registry } from '@moelab/core';
import { architecture, architecturesFor, ConfigReader, HF_ARCHITECTURES, type HfArchitecture } from './architectures.js';
import { type DecoderShape, shapeFromSpec, specFromShape } from './shape.js';
import { type TensorLink, tensorLinks, toHfTensors, toMoelabTensor } from './tensors.js';

/** Where tensors come from: names with their shapes, and float32 data on demand. */
export interface TensorSource {
  /** The shape of a tensor, or undefined when the source has no tensor of that name. */
  shape(name: string): number[] | undefined;
  /** Every tensor name the source holds. */
  names(): Iterable<string>;
  /** The tensor's data as float32 (F16 / BF16 / F64 decoded). */
  read(name: string): Float32Array;
  /** The file a tensor lives in, for error messages. */
  where(name: string): string;
}

/** A TensorSource over tensors in memory. */
export function memorySource(tensors: Map<string, { shape: number[]; data: Float32Array }>, file = 'model.safetensors'): TensorSource {
  return {
    shape: (n) => tensors.get(n)?.shape,
    names: () => tensors.keys(),
    read: (n) => tensors.get(n)!.data,
    where: () => file,
  };
}

/** Receives converted tensors in plan order. */
export type TensorSink = (name: string, shape: number[], data: Float32Array) => void;

export interface ImportPlan {
  arch: HfArchitecture;
  shape: DecoderShape;
  /** The moelab model spec. */
  spec: NodeSpec;
  links: TensorLink[];
  /** moelab tensors in the order {@link importTensors} emits them. */
  outputs: { name: string; shape: number[] }[];
}

export interface ExportPlan {
  arch: HfArchitecture;
  shape: DecoderShape;
  /** The HF config.json object. */
  config: Record<string, unknown>;
  links: TensorLink[];
  outputs: { name: string; shape: number[] }[];
  /** Training-only settings that do not carry over (printed by the CLI). */
  notes: string[];
}

/** Plan the import of an HF config.json (parsed). `where` names the file in errors. */
export function planImport(config: unknown, where = 'config.json'): ImportPlan {
  if (!config || typeof config !== 'object' || Array.isArray(config)) throw new MoelabError('config.json must hold a JSON object', where);
  const json = config as Record<string, unknown>;
  const arch = architecture(json.model_type, `${where}: model_type`);
  const shape = arch.fromConfig(new ConfigReader(json, where));
  const links = tensorLinks(shape, arch);
  return { arch, shape, spec: specFromShape(shape), links, outputs: links.map((l) => ({ name: l.moelab, shape: l.moelabShape })) };
}

/**
 * Plan the export of a moelab model spec as `arch` (a model_type), or as the first architecture that
 * can hold it when `arch` is undefined. Refuses, in one line, a model the target cannot express, naming
 * the architectures that could hold it.
 */
export function planExport(spec: NodeSpec, registry: Registry, arch?: string): ExportPlan {
  const r = shapeFromSpec(spec, registry);
  const all = HF_ARCHITECTURES.map((a) => a.modelType).join(', ');
  if (!r.ok) throw new MoelabError(`cannot export to Hugging Face (${arch ?? all}): ${r.reason}; none of the supported architectures can hold this model`);
  const fits = architecturesFor(r.shape);
  const target = arch === undefined ? fits[0] : architecture(arch, '--arch');
  if (!target) throw new MoelabError(`cannot export to Hugging Face: none of ${all} can hold this model (${HF_ARCHITECTURES[0]!.refuses(r.shape)})`);
  const why = target.refuses(r.shape);
  if (why) {
    const others = fits.map((a) => a.modelType);
    throw new MoelabError(
      `cannot export as ${target.modelType}: ${why}; ${others.length ? `architectures that can hold this model: ${others.join(', ')}` : `none of ${all} can hold it`}`,
    );
  }
  const links = tensorLinks(r.shape, target);
  const outputs = links.flatMap((l) => l.hf.map((name) => ({ name, shape: l.hfShape })));
  return { arch: target, shape: r.shape, config: target.toConfig(r.shape), links, outputs, notes: r.notes };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Checks that `source` holds exactly the tensors `expected` (name -> shape), ignoring names `ignore` accepts. */
function checkTensors(source: TensorSource, expected: Map<string, number[]>, what: string, ignore: (name: string) => boolean = () => false): void {
  for (const [name, shape] of expected) {
    const got = source.shape(name);
    if (!got) throw new MoelabError(`tensor "${name}" is missing (${what} needs it)`, source.where(name));
    if (!sameShape(got, shape)) throw new MoelabError(`tensor "${name}" has shape [${got}], ${what} needs [${shape}]`, source.where(name));
  }
  for (const name of source.names())
    if (!expected.has(name) && !ignore(name)) throw new MoelabError(`tensor "${name}" is not part of ${what}`, source.where(name));
}

/** Non-persistent buffers some older HF checkpoints saved (RoPE frequencies): recomputed, never read. */
const IGNORED_HF = /\.rotary_emb\.inv_freq$/;

/** Convert the HF tensors of `source` to moelab tensors, one link at a time, in plan order. Checks every name and shape first. */
export function importTensors(plan: ImportPlan, source: TensorSource, sink: TensorSink): void {
  const expected = new Map<string, number[]>();
  for (const l of plan.links) for (const n of l.hf) expected.set(n, l.hfShape);
  checkTensors(source, expected, `a ${plan.arch.modelType} model of this config.json`, (n) => IGNORED_HF.test(n));
  for (const l of plan.links)
    sink(
      l.moelab,
      l.moelabShape,
      toMoelabTensor(
        l,
        l.hf.map((n) => source.read(n)),
      ),
    );
}

/** Convert moelab tensors of `source` to HF tensors, one link at a time, in plan order. Checks every name and shape first. */
export function exportTensors(plan: ExportPlan, source: TensorSource, sink: TensorSink): void {
  const expected = new Map<string, number[]>();
  for (const l of plan.links) expected.set(l.moelab, l.moelabShape);
  checkTensors(source, expected, "the checkpoint's model spec");
  for (const l of plan.links) {
    const parts = toHfTensors(l, source.read(l.moelab));
    l.hf.forEach((name, i) => {
      sink(name, l.hfShape, parts[i]!);
    });
  }
}
