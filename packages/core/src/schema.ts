/**
 * Config schemas. moelab uses TypeBox: a TypeBox schema *is* a JSON Schema document, so the same object
 * validates configs here and generates forms in the playground.
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { closeMatches, MoelabError } from './errors.js';

export { Type, type Static, type TSchema };

/** The JSON form of a node in a model spec: `{ "type": "name", ...options }` or just `"name"`. */
export type NodeSpec = string | ({ type: string } & Record<string, unknown>);

/** Marker key: a schema property with this key holds a child node of the named registry kind. */
export const NODE_KIND = 'x-moelab-kind';
/** Marker key: the default child node of a Node() property. */
export const NODE_DEFAULT = 'x-moelab-default';

/**
 * A child node of registry kind `kind` inside a parent's config (e.g. a MoE layer's `router`).
 * Only its shape is checked here; the child's own schema is checked when the builder resolves it.
 */
export function Node(kind: string, options: { description?: string; default?: NodeSpec } = {}) {
  // The default is kept under our own key: TypeBox would merge an object default into a given node.
  const { default: dflt, ...rest } = options;
  return Type.Union([Type.String(), Type.Object({ type: Type.String() }, { additionalProperties: true })], {
    [NODE_KIND]: kind,
    ...(dflt !== undefined ? { [NODE_DEFAULT]: dflt } : {}),
    ...rest,
  }) as unknown as import('@sinclair/typebox').TUnsafe<NodeSpec>;
}

/** A strict object: unknown keys are errors (catches typos such as `expert` for `experts`). */
export function Config<P extends Record<string, TSchema>>(properties: P, options: { description?: string } = {}) {
  return Type.Object(properties, { additionalProperties: false, ...options });
}

function joinPath(base: string, pointer: string): string {
  if (!pointer) return base;
  const parts = pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : `${acc}.${p}`), base);
}

/** The registered type names of a kind (the registry's `names`), for messages about child nodes. */
export type TypeNames = (kind: string) => string[];

/**
 * Why a value matches none of a union's alternatives, in the user's terms: the allowed `type` names of
 * a child node (when `typeNames` is given), the allowed literals of an enumeration, or the kinds of value.
 */
function unionMessage(schema: TSchema, value: unknown, typeNames?: TypeNames): string {
  const got = value === undefined ? '' : ` (got ${JSON.stringify(value)})`;
  const kind = (schema as Record<string, unknown>)[NODE_KIND];
  if (typeof kind === 'string') {
    const names = typeNames?.(kind) ?? [];
    const allowed = names.length ? `; allowed types: ${names.join(', ')}` : '';
    if (value && typeof value === 'object' && !Array.isArray(value) && !('type' in value)) return `this ${kind} node has no "type" field${allowed}${got}`;
    return `expected a ${kind} node: a type name or an object with a "type" field${allowed}${got}`;
  }
  const options = (schema as unknown as { anyOf: Record<string, unknown>[] }).anyOf;
  if (options.every((o) => 'const' in o)) {
    const values = options.map((o) => o.const);
    const close = typeof value === 'string' ? closeMatches(value, values.map(String)) : [];
    const hint = close.length ? `. Did you mean: ${close.join(', ')}?` : '';
    return `expected one of ${values.map((v) => JSON.stringify(v)).join(', ')}${got}${hint}`;
  }
  const kinds = [...new Set(options.map((o) => String(o.type ?? ('const' in o ? JSON.stringify(o.const) : 'value'))))];
  return `expected ${kinds.join(' or ')}${got}`;
}

/**
 * Fill defaults and validate `value` against `schema`. Throws a MoelabError naming the JSON path of the
 * first problem, e.g. `$.block.ffn.router.k: Expected integer (got "two")`. `typeNames` lets the message
 * for a malformed child node list the registered types of its kind.
 */
export function validateConfig<S extends TSchema>(schema: S, value: unknown, path = '$', typeNames?: TypeNames): Static<S> {
  // Value.Default mutates: work on a clone so the user's spec object is untouched.
  const withDefaults = Value.Default(schema, structuredClone(value ?? {})) as Record<string, unknown>;
  const props = (schema as { properties?: Record<string, Record<string, unknown>> }).properties ?? {};
  if (withDefaults && typeof withDefaults === 'object') {
    for (const [k, p] of Object.entries(props)) {
      if (withDefaults[k] === undefined && p[NODE_DEFAULT] !== undefined) withDefaults[k] = structuredClone(p[NODE_DEFAULT]);
    }
  }
  const first = Value.Errors(schema, withDefaults).First();
  if (first) {
    let where = joinPath(path, first.path);
    let msg = first.message;
    const objSchema = first.schema as { additionalProperties?: unknown; properties?: object };
    if (objSchema && objSchema.additionalProperties === false && /additional|unexpected propert/i.test(msg)) {
      // TypeBox points at the offending key: report it on its parent object, with the allowed keys.
      const key = first.path.split('/').pop() ?? '';
      where = joinPath(path, first.path.split('/').slice(0, -1).join('/'));
      msg = `unknown field "${key}"; allowed: ${Object.keys(objSchema.properties ?? {}).join(', ')}`;
    } else if (Array.isArray((first.schema as { anyOf?: unknown }).anyOf)) {
      msg = unionMessage(first.schema, first.value, typeNames);
    } else if (first.value !== undefined) {
      msg = `${msg} (got ${JSON.stringify(first.value)})`;
    }
    throw new MoelabError(msg, where);
  }
  return withDefaults as Static<S>;
}

/** The defaults a schema declares, as a plain object. */
export function schemaDefaults(schema: TSchema): Record<string, unknown> {
  const out = Value.Default(schema, {}) as Record<string, unknown>;
  const props = (schema as { properties?: Record<string, Record<string, unknown>> }).properties ?? {};
  for (const [k, p] of Object.entries(props)) if (out[k] === undefined && p[NODE_DEFAULT] !== undefined) out[k] = structuredClone(p[NODE_DEFAULT]);
  return out;
}
