/**
 * Golden-fixture verification (format: shared fixtures README). A fixture is a safetensors file of
 * params / inputs / expected values / gradients plus a JSON document with the config and the tolerance
 * rule. Plugin packages register a runner per fixture `kind` (registry kind `fixture`, name = the kind
 * with `_` -> `-`); `verifyFixture` runs it and checks every expected tensor with the fixture's rule:
 *
 *   |got - exp| <= rtol * |exp| + atol * max|exp|   (elementwise; max over the whole tensor)
 *
 * Integer tensors (selected experts, indices) must match exactly.
 */
import { MoelabError } from './errors.js';
import type { Registry } from './registry.js';
import type { SafeTensor } from './safetensors.js';
import { tf } from './tf.js';
import { Type } from './schema.js';
import { defineEntry } from './registry.js';

export interface Tolerance {
  rtol: number;
  atol: number;
}

export interface FixtureDoc {
  name: string;
  kind: string;
  config: Record<string, unknown>;
  tolerances?: { outputs_and_losses?: Tolerance; grads?: Tolerance };
  tensors: Record<string, { role?: string; dtype: string; shape: number[] }>;
  modes?: string[];
  [key: string]: unknown;
}

export interface Fixture {
  doc: FixtureDoc;
  tensors: Map<string, SafeTensor>;
}

/** Computes, under the fixture's own tensor names, every expected/grad tensor it can. */
export type FixtureRunner = (fx: Fixture) => Map<string, Float32Array | Int32Array>;

export interface TensorCheck {
  name: string;
  ok: boolean;
  missing: boolean;
  /** Largest |got - exp|. */
  maxError: number;
  /** Largest error as a fraction of its elementwise budget (<= 1 passes). */
  budgetUsed: number;
  note?: string;
}

export interface VerifyReport {
  name: string;
  kind: string;
  ok: boolean;
  checks: TensorCheck[];
}

const DEFAULT_OUT: Tolerance = { rtol: 1e-4, atol: 1e-5 };
const DEFAULT_GRAD: Tolerance = { rtol: 1e-3, atol: 1e-4 };

/** Tensors a fixture expects an implementation to reproduce. */
export function isCheckedTensor(name: string): boolean {
  return name.startsWith('expected.') || name.startsWith('grad_');
}

export function fixtureEntryName(kind: string): string {
  return kind.replace(/_/g, '-');
}

export function compareTensor(name: string, got: ArrayLike<number> | undefined, exp: SafeTensor, tol: Tolerance): TensorCheck {
  if (!got) return { name, ok: false, missing: true, maxError: Number.NaN, budgetUsed: Number.POSITIVE_INFINITY, note: 'not computed' };
  const e = exp.data;
  if (got.length !== e.length) {
    return { name, ok: false, missing: false, maxError: Number.NaN, budgetUsed: Number.POSITIVE_INFINITY, note: `size ${got.length}, expected ${e.length}` };
  }
  const integer = exp.dtype.startsWith('I') || exp.dtype === 'U8' || exp.dtype === 'BOOL';
  let maxAbs = 0;
  for (let i = 0; i < e.length; i++) maxAbs = Math.max(maxAbs, Math.abs(e[i]!));
  let maxError = 0;
  let budgetUsed = 0;
  for (let i = 0; i < e.length; i++) {
    const g = got[i]!;
    const x = e[i]!;
    const err = Math.abs(g - x);
    if (!Number.isFinite(g)) {
      maxError = Number.POSITIVE_INFINITY;
      budgetUsed = Number.POSITIVE_INFINITY;
      break;
    }
    maxError = Math.max(maxError, err);
    if (integer) {
      if (err !== 0) budgetUsed = Number.POSITIVE_INFINITY;
      continue;
    }
    const budget = tol.rtol * Math.abs(x) + tol.atol * maxAbs;
    budgetUsed = Math.max(budgetUsed, budget > 0 ? err / budget : err > 0 ? Number.POSITIVE_INFINITY : 0);
  }
  return { name, ok: budgetUsed <= 1, missing: false, maxError, budgetUsed };
}

/** Run the fixture's registered runner and check every expected / gradient tensor. */
export function verifyFixture(fx: Fixture, registry: Registry): VerifyReport {
  const entryName = fixtureEntryName(fx.doc.kind);
  if (!registry.has('fixture', entryName)) {
    const known = registry.names('fixture').join(', ') || 'none';
    throw new MoelabError(`no runner for fixture kind "${fx.doc.kind}" (registered kinds: ${known})`, fx.doc.name);
  }
  const runner = registry.get('fixture', entryName).create(fx.doc.config, {
    registry,
    path: '$',
    seed: 0,
    env: {},
    rng: undefined as never,
    build: () => {
      throw new Error('fixture runners build their own modules');
    },
    need: () => {
      throw new Error('fixture runners have no parent');
    },
    shared: () => {
      throw new Error('fixture runners build their own modules');
    },
  }) as FixtureRunner;
  const got = runner(fx);
  const outTol = fx.doc.tolerances?.outputs_and_losses ?? DEFAULT_OUT;
  const gradTol = fx.doc.tolerances?.grads ?? DEFAULT_GRAD;
  const checks: TensorCheck[] = [];
  for (const [name, exp] of [...fx.tensors.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    if (!isCheckedTensor(name)) continue;
    checks.push(compareTensor(name, got.get(name), exp, name.startsWith('grad_') ? gradTol : outTol));
  }
  return { name: fx.doc.name, kind: fx.doc.kind, ok: checks.length > 0 && checks.every((c) => c.ok), checks };
}

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
  if (!doc || typeof doc !== 'object') throw new MoelabError('not a JSON object', source);
  if (typeof doc.kind !== 'string') throw new MoelabError('missing "kind" (e.g. "sigma_moe")', `${source}: $.kind`);
  if (!doc.tensors || typeof doc.tensors !== 'object') throw new MoelabError('missing "tensors" table', `${source}: $.tensors`);
  if (!doc.config || typeof doc.config !== 'object') doc.config = {};
  if (typeof doc.name !== 'string') doc.name = source;
  return doc;
}

/** Helper for plugin packages: declare a fixture runner entry. */
export function defineFixtureRunner(kind: string, description: string, runner: (config: Record<string, unknown>) => FixtureRunner) {
  return defineEntry({
    kind: 'fixture',
    name: fixtureEntryName(kind),
    description,
    schema: Type.Record(Type.String(), Type.Unknown()),
    create: (config) => runner(config as Record<string, unknown>),
  });
}

/** A tensor of a fixture, or an error naming it. */
export function fixtureTensor(fx: Fixture, name: string): SafeTensor {
  const t = fx.tensors.get(name);
  if (!t) throw new MoelabError(`tensor "${name}" is missing from the fixture`, fx.doc.name);
  return t;
}

/** The fixture's `param.*` tensors under their own names. */
export function fixtureParams(fx: Fixture): Map<string, SafeTensor> {
  const out = new Map<string, SafeTensor>();
  for (const [name, t] of fx.tensors) if (name.startsWith('param.')) out.set(name.slice('param.'.length), t);
  return out;
}

/** A float input of the fixture as a trainable variable (so gradients w.r.t. it can be taken). */
export function fixtureInputVariable(fx: Fixture, name: string): tf.Variable {
  const t = fixtureTensor(fx, `input.${name}`);
  return tf.variable(tf.tensor(Float32Array.from(t.data), t.shape), true);
}

/**
 * d f / d v for each named variable, stored as `<prefix>.<name>` (zeros where f does not depend on v).
 */
export function gradientsInto(out: Map<string, Float32Array | Int32Array>, prefix: string, f: () => tf.Scalar, vars: [string, tf.Variable][]): number {
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
