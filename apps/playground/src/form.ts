/**
 * Forms generated from JSON Schema. A registry entry's schema is TypeBox = JSON Schema: numbers,
 * integers, booleans, strings, unions of literals (a choice list), nested objects, and `Node(kind)`
 * properties (x-moelab-kind: a child node chosen from that registry kind, with its own form).
 * Defaults are shown filled in; values are checked with core's validateConfig and problems are
 * explained next to the field they concern.
 */
import { MoelabError, NODE_DEFAULT, NODE_KIND, type NodeSpec, type Registry, schemaDefaults, validateConfig } from '@moelab/core';
import { el } from './dom.js';

type Schema = Record<string, unknown> & {
  type?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  anyOf?: Schema[];
  const?: unknown;
  default?: unknown;
  description?: string;
  minimum?: number;
  maximum?: number;
};

export interface FormHost {
  registry: Registry;
  /** Called after every edit with the whole new spec. */
  onChange(spec: NodeSpec): void;
}

function literalChoices(s: Schema): unknown[] | undefined {
  if (!s.anyOf?.every((o) => 'const' in o)) return undefined;
  return s.anyOf.map((o) => o.const);
}

function parseScalar(text: string, s: Schema): unknown {
  const t = text.trim();
  if (s.type === 'number' || s.type === 'integer') {
    if (t === '') return undefined;
    const n = Number(t);
    return Number.isFinite(n) ? n : t;
  }
  return text;
}

/** A node form: a type choice list for `kind` and the chosen entry's options. */
export class SpecForm {
  private spec: NodeSpec = 'transformer-lm';
  private errorSlots = new Map<string, HTMLElement>();
  private checks: (() => void)[] = [];

  constructor(
    private readonly root: HTMLElement,
    private readonly host: FormHost,
  ) {}

  set(spec: NodeSpec): void {
    this.spec = structuredClone(spec);
    this.render();
  }

  get(): NodeSpec {
    return structuredClone(this.spec);
  }

  private render(): void {
    this.root.replaceChildren();
    this.errorSlots.clear();
    this.checks = [];
    this.root.append(
      this.nodeEditor('model', this.spec, '$', (n) => {
        this.spec = n ?? 'transformer-lm';
      }),
    );
    this.validate();
  }

  /** Re-run every node's validation and put messages next to the fields. */
  validate(): void {
    for (const slot of this.errorSlots.values()) slot.textContent = '';
    for (const c of this.checks) c();
  }

  private changed(rerender: boolean): void {
    if (rerender) this.render();
    else this.validate();
    this.host.onChange(this.get());
  }

  private nodeEditor(
    kind: string,
    node: NodeSpec | undefined,
    path: string,
    set: (n: NodeSpec | undefined) => void,
    optional = false,
    key?: string,
  ): HTMLElement {
    const { registry } = this.host;
    const box = el('fieldset', { class: 'node', 'data-path': path, 'data-kind': kind });
    const legend = el('legend');
    const select = el('select', { 'data-path': `${path}.type`, 'aria-label': `${kind} at ${path}` });
    if (optional) select.append(el('option', { value: '' }, '(none)'));
    const names = registry.names(kind);
    const type = node === undefined ? '' : typeof node === 'string' ? node : String(node.type ?? '');
    for (const name of names) {
      const o = el('option', { value: name }, name);
      o.title = registry.get(kind, name).description;
      select.append(o);
    }
    if (type && !names.includes(type)) select.append(el('option', { value: type }, `${type} (unknown)`));
    select.value = type;
    legend.append(key && key !== kind ? `${key} (${kind}) ` : `${kind} `, select);
    box.append(legend);
    const nodeError = el('div', { class: 'error', 'data-error-for': path });
    this.errorSlots.set(`node:${path}`, nodeError);
    select.addEventListener('change', () => {
      set(select.value ? { type: select.value } : undefined);
      this.changed(true);
    });
    if (!type || !registry.has(kind, type)) {
      box.append(nodeError);
      this.checks.push(() => {
        if (type && !registry.has(kind, type)) {
          try {
            registry.get(kind, type, `${path}.type`);
          } catch (e) {
            nodeError.textContent = (e as Error).message;
          }
        }
      });
      return box;
    }
    const entry = registry.get(kind, type);
    box.append(el('div', { class: 'desc' }, entry.description));
    box.append(nodeError);
    // Work on the object form of the node; a bare name becomes { type } on first edit.
    const obj = (): Record<string, unknown> & { type: string } => {
      const cur = this.lookup(path);
      if (typeof cur === 'string' || cur === undefined) {
        const o = typeof node === 'object' && node ? (structuredClone(node) as { type: string }) : { type };
        set(o);
        return o;
      }
      return cur as Record<string, unknown> & { type: string };
    };
    const values = typeof node === 'object' && node ? (node as Record<string, unknown>) : {};
    this.objectFields(box, entry.schema as unknown as Schema, values, path, obj);
    this.checks.push(() => {
      const cur = this.lookup(path);
      const { type: _t, ...options } = typeof cur === 'object' && cur ? (cur as Record<string, unknown>) : {};
      void _t;
      try {
        validateConfig(entry.schema, options, path);
      } catch (e) {
        const where = e instanceof MoelabError ? (e.where ?? path) : path;
        const msg = e instanceof MoelabError && e.where ? e.message.slice(e.where.length + 2) : (e as Error).message;
        const slot = this.errorSlots.get(where) ?? nodeError;
        slot.textContent = slot === nodeError && where !== path ? `${where}: ${msg}` : msg;
      }
    });
    return box;
  }

  /** Fields of an object schema. `target()` returns the live object to write into. */
  private objectFields(box: HTMLElement, schema: Schema, values: Record<string, unknown>, path: string, target: () => Record<string, unknown>): void {
    const defaults = schemaDefaults(schema as never);
    const required = new Set(schema.required ?? []);
    for (const [key, prop] of Object.entries(schema.properties ?? {})) {
      const p = `${path}.${key}`;
      const kind = prop[NODE_KIND] as string | undefined;
      if (kind) {
        const child = (values[key] ?? prop[NODE_DEFAULT]) as NodeSpec | undefined;
        box.append(
          this.nodeEditor(
            kind,
            child,
            p,
            (n) => {
              const t = target();
              if (n === undefined) delete t[key];
              else t[key] = n;
            },
            !required.has(key) && prop[NODE_DEFAULT] === undefined,
            key,
          ),
        );
        continue;
      }
      if (prop.type === 'object' && prop.properties) {
        const sub = el('fieldset', { class: 'object', 'data-path': p });
        sub.append(el('legend', {}, key));
        const err = el('div', { class: 'error', 'data-error-for': p });
        this.errorSlots.set(p, err);
        sub.append(err);
        const subValues = (values[key] && typeof values[key] === 'object' ? values[key] : {}) as Record<string, unknown>;
        this.objectFields(sub, prop, subValues, p, () => {
          const t = target();
          if (!t[key] || typeof t[key] !== 'object') t[key] = {};
          return t[key] as Record<string, unknown>;
        });
        box.append(sub);
        continue;
      }
      box.append(this.field(key, prop, values[key], defaults[key], p, target));
    }
  }

  private field(key: string, prop: Schema, value: unknown, dflt: unknown, path: string, target: () => Record<string, unknown>): HTMLElement {
    const row = el('div', { class: 'field' });
    const label = el('label', {}, key);
    if (prop.description) label.title = prop.description;
    row.append(label);
    const isDefault = value === undefined;
    const shown = isDefault ? dflt : value;
    const choices = literalChoices(prop);
    let input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
    const write = (v: unknown) => {
      const t = target();
      if (v === undefined) delete t[key];
      else t[key] = v;
      input.classList.toggle('is-default', v === undefined);
      this.changed(false);
    };
    if (choices) {
      const s = el('select', { 'data-path': path });
      if (dflt === undefined) s.append(el('option', { value: '' }, '(unset)'));
      for (const c of choices) s.append(el('option', { value: JSON.stringify(c) }, String(c)));
      s.value = shown === undefined ? '' : JSON.stringify(shown);
      s.addEventListener('change', () => write(s.value === '' ? undefined : JSON.parse(s.value)));
      input = s;
    } else if (prop.type === 'boolean') {
      const c = el('input', { type: 'checkbox', 'data-path': path });
      c.checked = Boolean(shown);
      c.addEventListener('change', () => write(c.checked));
      input = c;
    } else if (prop.type === 'number' || prop.type === 'integer' || prop.type === 'string') {
      const t = el('input', { type: 'text', 'data-path': path, inputmode: prop.type === 'string' ? 'text' : 'decimal' });
      t.value = shown === undefined ? '' : String(shown);
      if (dflt !== undefined) t.placeholder = String(dflt);
      const range = [prop.minimum !== undefined ? `≥ ${prop.minimum}` : '', prop.maximum !== undefined ? `≤ ${prop.maximum}` : ''].filter(Boolean).join(', ');
      t.title = [prop.description, prop.type, range].filter(Boolean).join(' · ');
      t.addEventListener('change', () => write(parseScalar(t.value, prop)));
      input = t;
    } else {
      // Arrays, unions of shapes, free objects: edited as JSON.
      const a = el('textarea', { 'data-path': path, rows: '1' });
      a.value = shown === undefined ? '' : JSON.stringify(shown);
      a.addEventListener('change', () => {
        if (a.value.trim() === '') return write(undefined);
        try {
          write(JSON.parse(a.value));
        } catch {
          write(a.value);
        }
      });
      input = a;
    }
    input.classList.toggle('is-default', isDefault);
    row.append(input);
    if (!prop.required && dflt === undefined && !choices) row.append(el('span', { class: 'hint' }, 'optional'));
    const err = el('div', { class: 'error', 'data-error-for': path });
    this.errorSlots.set(path, err);
    row.append(err);
    return row;
  }

  /** The node at a JSON path like `$.block.ffn.router` inside the current spec. */
  private lookup(path: string): unknown {
    let cur: unknown = this.spec;
    for (const part of path.split('.').slice(1)) {
      if (cur === null || typeof cur !== 'object') return undefined;
      cur = (cur as Record<string, unknown>)[part];
    }
    return cur;
  }
}
