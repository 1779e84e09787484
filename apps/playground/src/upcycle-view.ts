/**
 * The Upcycle section: pick dense sources (the model of run A or B, or checkpoint files), pick an
 * upcycler and its options, build the MoE (upcycle.ts), show the report and the provenance table
 * ("where did this weight come from"), and hand the result to a run to train on.
 */
import type { Registry, TrainConfig } from '@moelab/core';
import { formatReport, type UpcycleSource } from '@moelab/upcycle';
import { readUploads } from './checkpoint-io.js';
import type { TextData } from './data.js';
import { TextTokens } from './data.js';
import { $, el, fmt } from './dom.js';
import type { RunPanel } from './run-panel.js';
import { methodNode, type PageUpcycle, sourceFromFiles, upcycledCheckpoint, upcycleSources } from './upcycle.js';

export interface UpcycleHost {
  runs: RunPanel[];
  data(): Promise<TextData>;
  trainConfig(): Partial<TrainConfig>;
}

export class UpcycleView {
  readonly sources: UpcycleSource[] = [];
  built?: PageUpcycle;
  errors: string[] = [];
  private readonly method = $<HTMLSelectElement>('#up-method');
  private readonly options = $<HTMLTextAreaElement>('#up-options');

  constructor(
    private readonly registry: Registry,
    private readonly host: UpcycleHost,
  ) {
    for (const name of registry.names('upcycler')) this.method.append(el('option', { value: name }, name));
    this.method.value = registry.has('upcycler', 'btx') ? 'btx' : (registry.names('upcycler')[0] ?? '');
    this.method.addEventListener('change', () => this.showMethod());
    this.showMethod();
    const adds = $('#up-add-runs');
    for (const run of host.runs) {
      const b = el('button', { type: 'button', class: `up-add-${run.name.toLowerCase()}` }, `Add run ${run.name}'s model`);
      b.addEventListener('click', () => void this.addRun(run));
      adds.append(b);
    }
    $<HTMLInputElement>('#up-file').addEventListener('change', (e) => void this.addFiles((e.target as HTMLInputElement).files));
    $('#up-clear').addEventListener('click', () => {
      this.sources.length = 0;
      this.renderSources();
    });
    $('#up-build').addEventListener('click', () => void this.build());
    const trains = $('#up-train');
    for (const run of host.runs) {
      const b = el('button', { type: 'button', class: `up-train-${run.name.toLowerCase()}` }, `Train it in run ${run.name}`);
      b.addEventListener('click', () => this.trainIn(run));
      trains.append(b);
    }
  }

  /** What the e2e test reads through window.playground. */
  snapshot() {
    const r = this.built?.result;
    return {
      sources: this.sources.map((s) => s.name),
      method: this.method.value,
      built: r ? { method: r.report.method, totalParams: r.report.totalParams, activeParams: r.report.activeParams, tensors: r.weights.size } : undefined,
      provenance: this.built?.rows.map((row) => ({ tensor: row.tensor, op: row.op, from: row.from, count: row.count })) ?? [],
      errors: this.errors,
    };
  }

  private showMethod(): void {
    const name = this.method.value;
    if (!name) return;
    const d = this.registry.describe('upcycler', name);
    $('#up-desc').textContent = d.description;
    this.options.value = JSON.stringify(d.defaults, null, 1);
  }

  private error(message: string): void {
    this.errors.push(message);
    $('#up-error').textContent = message;
  }

  private clearError(): void {
    $('#up-error').textContent = '';
  }

  private async addRun(run: RunPanel): Promise<void> {
    this.clearError();
    try {
      const ex = await run.exportModel();
      const name = `run${run.name}@${ex.step}`;
      this.sources.push(
        sourceFromFiles(name, [
          { name: 'config.json', bytes: new TextEncoder().encode(ex.configJson) },
          { name: 'model.safetensors', bytes: new Uint8Array(ex.weights) },
        ]),
      );
      this.renderSources();
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  private async addFiles(files: FileList | null): Promise<void> {
    if (!files || files.length === 0) return;
    this.clearError();
    try {
      const list = await readUploads(files);
      const name = `file${this.sources.length + 1}`;
      this.sources.push(
        sourceFromFiles(
          name,
          list.map((f) => ({ name: f.name, bytes: new Uint8Array(f.bytes) })),
        ),
      );
      this.renderSources();
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  private renderSources(): void {
    const list = $('#up-sources');
    list.textContent = '';
    this.sources.forEach((s, i) => {
      const params = [...s.weights.values()].reduce((n, t) => n + t.data.length, 0);
      list.append(el('li', {}, `${i === 0 ? 'seed' : `expert ${i}`}: ${s.name} (${fmt(params)} parameters, step ${s.step ?? 0})`));
    });
    if (this.sources.length === 0) list.append(el('li', { class: 'hint' }, 'no sources yet: the first one is the seed, the others are experts'));
  }

  private async build(): Promise<void> {
    this.clearError();
    try {
      const data = await this.host.data();
      const text = new TextTokens(data).tokens('train');
      this.built = upcycleSources(this.registry, methodNode(this.method.value, this.options.value), this.sources, text);
      this.renderResult();
    } catch (e) {
      this.built = undefined;
      this.renderResult();
      this.error((e as Error).message);
    }
  }

  private renderResult(): void {
    const report = $('#up-report');
    const table = $<HTMLTableElement>('#up-provenance');
    report.textContent = '';
    table.textContent = '';
    if (!this.built) return;
    report.append(el('pre', {}, formatReport(this.built.result)));
    const head = el('tr');
    for (const h of ['tensor', 'shape', 'op', 'from', 'note']) head.append(el('th', {}, h));
    table.append(head);
    for (const r of this.built.rows) {
      const tr = el('tr', { 'data-op': r.op });
      tr.append(
        el('td', {}, r.count > 1 ? `${r.tensor} (×${r.count})` : r.tensor),
        el('td', {}, JSON.stringify(r.shape)),
        el('td', { class: `op op-${r.op}` }, r.op),
        el('td', {}, r.from.length ? r.from.join(', ') : '–'),
        el('td', {}, r.note),
      );
      table.append(tr);
    }
  }

  private trainIn(run: RunPanel): void {
    this.clearError();
    if (!this.built) {
      this.error('build an upcycled model first');
      return;
    }
    try {
      const { configJson, weights } = upcycledCheckpoint(this.registry, this.built.result, this.host.trainConfig());
      const bytes = weights.slice().buffer as ArrayBuffer;
      void run.loadFiles([
        { name: 'config.json', bytes: new TextEncoder().encode(configJson).buffer as ArrayBuffer },
        { name: 'model.safetensors', bytes },
      ]);
    } catch (e) {
      this.error((e as Error).message);
    }
  }
}
