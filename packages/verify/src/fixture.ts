/**
 * A golden fixture: a JSON document (kind, config of the official implementation, tolerance rule, tensor
 * table) and a safetensors file beside it holding the parameters (`param.*`, `buffer.*`), the inputs
 * (`input.*`), the reference outputs (`expected.*`) and the reference gradients (`grad_*`). This file
 * parses one and gives runners typed access to its tensors.
 */
import { buildNode, loadState, type Module, MoelabError, type Registry, readSafetensors, type SafeTensor, tf } from '@moelab/core';

export interface Tolerance {
  rtol: number;
  atol: number;
}

export interface FixtureDoc {
  name: string;
  kind: string;
  config: Record<string, unknown>;
  tolerances?: { outputs_and_losses?: Tolerance; grads?: Tolerance };
  /** The same rule under the key some fixture sets use (e.g. `moa`). */
  tolerance?: { outputs?: Tolerance; grads?: Tolerance };
  tensors: Record<string, { role?: string; dtype: string; shape: number[] }>;
  modes?: string[];
  [key: string]: unknown;
}

export interface Fixture {
  doc: FixtureDoc;
  tensors: Map<string, SafeTensor>;
}

/** What a runner returns: every expected / gradient tensor it computed, under the fixture's names. */
export type FixtureOutputs = Map<string, Float32Array | Int32Array>;

/**
 * Computes, under the fixture's own tensor names, every `expected.*` / `grad_*` tensor it can, building
 * its modules through `registry` (which holds the plugins the system needs). It disposes what it creates.
 */
export type FixtureRunner = (fx: Fixture, registry: Registry) => FixtureOutputs;

/** Parse a fixture document, checking the fields verification relies on. */
export function parseFixtureDoc(text: string, source = 'fixture.json'): FixtureDoc {
  let doc: FixtureDoc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    // Python's json module writes the non-standard tokens NaN / Infinity / -Infinity (e.g. a top-k
    // margin of a fixture without routing); read them as null.
    try {
      doc = JSON.parse(text.replace(/([:,[]\s*)(?:-?Infinity|NaN)(?=\s*[,}\]])/g, '$1null'));
    } catch {
      throw new MoelabError(`not valid JSON (${(e as Error).message})`, source);
    }
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new MoelabError('not a JSON object', source);
  if (typeof doc.kind !== 'string') throw new MoelabError('missing "kind" (e.g. "sigma_moe")', `${source}: $.kind`);
  if (!doc.tensors || typeof doc.tensors !== 'object') throw new MoelabError('missing "tensors" table', `${source}: $.tensors`);
  if (!doc.config || typeof doc.config !== 'object') doc.config = {};
  if (typeof doc.name !== 'string') doc.name = source;
  return doc;
}

/** A fixture from its JSON text and its safetensors bytes (`source` names it in errors). */
export function parseFixture(jsonText: string, safetensors: Uint8Array, source = 'fixture.json'): Fixture {
  const doc = parseFixtureDoc(jsonText, source);
  const { tensors } = readSafetensors(safetensors, source.replace(/\.json$/, '.safetensors'));
  return { doc, tensors };
}

/** A number of the fixture's config (the official implementation's argument), or an error naming the key. */
export function configNumber(fx: Fixture, key: string, fallback?: number): number {
  const v = fx.doc.config[key] ?? fallback;
  if (typeof v !== 'number') throw new MoelabError(`fixture config needs a number "${key}"`, `${fx.doc.name}: $.config.${key}`);
  return v;
}

/** A tensor of the fixture, or an error naming it. */
export function fixtureTensor(fx: Fixture, name: string): SafeTensor {
  const t = fx.tensors.get(name);
  if (!t) throw new MoelabError(`tensor "${name}" is missing from the fixture`, fx.doc.name);
  return t;
}

/** A tensor of the fixture as a float32 tf tensor. */
export function fixtureFloatTensor(fx: Fixture, name: string): tf.Tensor {
  const t = fixtureTensor(fx, name);
  return tf.tensor(Float32Array.from(t.data), t.shape);
}

/** The fixture's `param.*` tensors under their own names (what `loadState` takes). */
export function fixtureParams(fx: Fixture): Map<string, SafeTensor> {
  const out = new Map<string, SafeTensor>();
  for (const [name, t] of fx.tensors) if (name.startsWith('param.')) out.set(name.slice('param.'.length), t);
  return out;
}

/** A float input of the fixture as a trainable variable (so gradients w.r.t. it can be taken). */
export function fixtureInputVariable(fx: Fixture, name: string): tf.Variable {
  return tf.variable(fixtureFloatTensor(fx, `input.${name}`), true);
}

/**
 * d f / d v for each named variable, stored as `<prefix>.<name>` (zeros where f does not depend on v).
 * Returns f's value.
 */
export function gradientsInto(out: FixtureOutputs, prefix: string, f: () => tf.Scalar, vars: [string, tf.Variable][]): number {
  const { value, grads } = tf.variableGrads(
    f,
    vars.map(([, v]) => v),
  );
  for (const [name, v] of vars) {
    const g = grads[v.name];
    out.set(`${prefix}.${name}`, g ? (g.dataSync() as Float32Array).slice() : new Float32Array(v.size));
  }
  const x = value.dataSync()[0]!;
  tf.dispose([value, ...Object.values(grads)]);
  return x;
}

/** A copy of a tensor's values. */
export const values = (t: tf.Tensor): Float32Array => (t.dataSync() as Float32Array).slice();

/** A scalar tensor's value as a one-element array. */
export const scalarValue = (t: tf.Tensor): Float32Array => Float32Array.of(t.dataSync()[0]!);

/** The two modes of fixtures with BatchNorm-style buffers. */
export const MODES = ['eval', 'train'] as const;

/** The fixture's parameters and buffers under their state_dict names. */
export function fixtureState(fx: Fixture): Map<string, SafeTensor> {
  const out = new Map<string, SafeTensor>();
  for (const [name, t] of fx.tensors) {
    if (name.startsWith('param.')) out.set(name.slice('param.'.length), t);
    else if (name.startsWith('buffer.')) out.set(name.slice('buffer.'.length), t);
  }
  return out;
}

/** Build an `ffn` node with the fixture's state loaded (paths under `layer.`, as in the official module). */
export function buildFixtureLayer<M>(registry: Registry, spec: { type: string; [key: string]: unknown }, dModel: number, fx: Fixture): M & Module {
  const layer = buildNode<M & Module>(registry, 'ffn', spec, '$', 0, { dModel });
  layer.assignPaths('layer');
  loadState(layer, fixtureState(fx), { source: fx.doc.name });
  return layer;
}

/** Reset buffers to the fixture's values (train-mode forwards update them). */
export function resetBuffers(layer: Module, fx: Fixture): void {
  for (const [name, v] of layer.namedBuffers()) {
    const t = fixtureTensor(fx, `buffer.${name}`);
    tf.tidy(() => v.assign(tf.tensor(Float32Array.from(t.data), v.shape)));
  }
}
