/**
 * The registry: one flat map of named entries per kind (router, expert, ffn, attention, block, norm, model,
 * ...). An entry is a plain object — name, description, config schema, defaults, factory — and a package
 * contributes entries through an explicit plugin object: `createRegistry().use(routers)`. Presets (ready
 * model specs) are a second, typed table filled from a plugin's `presets` list. Duplicate names are
 * errors; unknown names are errors that list the close matches.
 */
import { closeMatches, MoelabError } from './errors.js';
import { type Static, type TSchema, schemaDefaults } from './schema.js';
import type { BuildContext } from './builder.js';
import type { Preset, PresetDefinition } from './presets.js';

/** Well-known kinds. Plugins may add their own kinds (any string). */
export type Kind = 'model' | 'block' | 'attention' | 'ffn' | 'router' | 'expert' | 'norm' | 'peft' | 'upcycler' | 'kernel' | 'dataset' | (string & {});

export interface Entry<S extends TSchema = TSchema, R = unknown> {
  kind: Kind;
  name: string;
  /** One line: what this is. */
  description: string;
  /** TypeBox (= JSON Schema) of the node's options, without its `type` key. */
  schema: S;
  /** Build the object from a validated config (defaults filled in). */
  create(config: Static<S>, ctx: BuildContext): R;
  /** Where the maths is specified (a spec file section or a paper). */
  reference?: string;
  /** Properties of the entry that builders check, e.g. `{ causalSafe: true, batchDependent: false }`. */
  flags?: Record<string, boolean>;
}

/** Identity helper that keeps the schema's static type flowing into `create`. */
export function defineEntry<S extends TSchema, R>(entry: Entry<S, R>): Entry<S, R> {
  return entry;
}

export interface Plugin {
  name: string;
  /** Buildable entries (routers, experts, ...). */
  entries: Entry<TSchema, unknown>[];
  /** Ready model specs (`definePreset`), read back with `registry.preset(name)`. */
  presets?: PresetDefinition[];
}

/** A plugin from its name and its entries and/or presets (either list may be left out). */
export function definePlugin(plugin: { name: string; entries?: Entry<TSchema, unknown>[]; presets?: PresetDefinition[] }): Plugin {
  return { ...plugin, entries: plugin.entries ?? [] };
}

export interface EntryDescription {
  kind: string;
  name: string;
  description: string;
  reference?: string;
  flags: Record<string, boolean>;
  defaults: Record<string, unknown>;
  jsonSchema: TSchema;
}

function wildcard(pattern: string): RegExp {
  const esc = pattern
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${esc}$`, 'i');
}

export class Registry {
  private readonly byKind = new Map<string, Map<string, Entry>>();
  private readonly presetTable = new Map<string, PresetDefinition>();
  private readonly plugins: string[] = [];

  /** Add every entry and preset of a plugin. Using the same plugin twice is an error, like any duplicate name. */
  use(plugin: Plugin): this {
    if (this.plugins.includes(plugin.name)) throw new MoelabError(`plugin "${plugin.name}" is already in use`);
    for (const e of plugin.entries) this.register(e);
    for (const p of plugin.presets ?? []) this.registerPreset(p);
    this.plugins.push(plugin.name);
    return this;
  }

  registerPreset(preset: PresetDefinition): this {
    if (!preset.name || !/^[a-z0-9][a-z0-9-]*$/.test(preset.name)) {
      throw new MoelabError(`invalid preset name "${preset.name}": use lower-case letters, digits and '-'`);
    }
    if (this.presetTable.has(preset.name)) throw new MoelabError(`duplicate preset "${preset.name}": a preset with this name is already registered`);
    this.presetTable.set(preset.name, preset);
    return this;
  }

  /**
   * A fresh copy of a preset's spec and training config (callers may edit it), or an error listing close
   * names. `where` (e.g. `--preset`) is put in the message.
   */
  preset(name: string, where?: string): Preset {
    const p = this.presetTable.get(name);
    if (p) return { spec: structuredClone(p.spec), train: structuredClone(p.train) };
    const names = this.presetNames();
    const close = closeMatches(name, names);
    const hint = close.length ? ` Did you mean: ${close.join(', ')}?` : names.length ? ` Known presets: ${names.join(', ')}.` : ' No presets are registered.';
    throw new MoelabError(`unknown preset "${name}".${hint}`, where);
  }

  hasPreset(name: string): boolean {
    return this.presetTable.has(name);
  }

  presetNames(): string[] {
    return [...this.presetTable.keys()].sort();
  }

  /** Preset definitions (name, description, spec, train), optionally filtered by a wildcard such as `moe*`. */
  presets(pattern?: string): PresetDefinition[] {
    const re = pattern ? wildcard(pattern) : undefined;
    return [...this.presetTable.values()].filter((p) => !re || re.test(p.name)).sort((a, b) => a.name.localeCompare(b.name));
  }

  register<S extends TSchema, R>(entry: Entry<S, R>): this {
    if (!entry.name || !/^[a-z0-9][a-z0-9-]*$/.test(entry.name)) {
      throw new MoelabError(`invalid ${entry.kind} name "${entry.name}": use lower-case letters, digits and '-'`);
    }
    let m = this.byKind.get(entry.kind);
    if (!m) {
      m = new Map();
      this.byKind.set(entry.kind, m);
    }
    if (m.has(entry.name)) throw new MoelabError(`duplicate ${entry.kind} "${entry.name}": a ${entry.kind} with this name is already registered`);
    m.set(entry.name, entry as unknown as Entry);
    return this;
  }

  has(kind: Kind, name: string): boolean {
    return this.byKind.get(kind)?.has(name) ?? false;
  }

  /** The entry, or an error listing close matches. `where` (a JSON path) is put in the message. */
  get(kind: Kind, name: string, where?: string): Entry {
    const e = this.byKind.get(kind)?.get(name);
    if (e) return e;
    const names = this.names(kind);
    const close = closeMatches(name, names);
    const hint = close.length
      ? ` Did you mean: ${close.join(', ')}?`
      : names.length
        ? ` Known ${kind} types: ${names.join(', ')}.`
        : ` No ${kind} types are registered (did you forget registry.use(...) for the plugin that provides them?).`;
    throw new MoelabError(`unknown ${kind} "${name}".${hint}`, where);
  }

  kinds(): string[] {
    return [...this.byKind.keys()].sort();
  }

  names(kind: Kind): string[] {
    return [...(this.byKind.get(kind)?.keys() ?? [])].sort();
  }

  /** Entries of one kind (or all kinds), optionally filtered by a wildcard such as `sigma*`. */
  list(kind?: Kind, pattern?: string): Entry[] {
    const re = pattern ? wildcard(pattern) : undefined;
    const kinds = kind ? [kind] : this.kinds();
    const out: Entry[] = [];
    for (const k of kinds) {
      for (const e of this.byKind.get(k)?.values() ?? []) if (!re || re.test(e.name)) out.push(e);
    }
    return out.sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
  }

  describe(kind: Kind, name: string): EntryDescription {
    const e = this.get(kind, name);
    return {
      kind: e.kind,
      name: e.name,
      description: e.description,
      reference: e.reference,
      flags: { ...(e.flags ?? {}) },
      defaults: schemaDefaults(e.schema),
      jsonSchema: e.schema,
    };
  }

  pluginNames(): string[] {
    return [...this.plugins];
  }
}

export function createRegistry(...plugins: Plugin[]): Registry {
  const r = new Registry();
  for (const p of plugins) r.use(p);
  return r;
}
