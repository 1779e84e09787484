/**
 * The Fine-tune section: pick a base (a run's model or checkpoint files), a method of
 * `@moelab/finetune` and its options, the fine-tuning text and the base's domain, and fine-tune in a
 * worker (job-worker.ts, finetune.ts) with a progress bar and a loss chart; then see the trainable and
 * frozen parameter counts, the perplexity on both domains before and after, download the adapter, or
 * load the fine-tuned model (adapters folded into the base where they can be) into a run.
 */
import type { NodeSpec, Registry, TrainConfig } from '@moelab/core';
import { finetuneMethod, type ParameterCounts } from '@moelab/finetune';
import { lineChart, type RedrawOnResize } from './charts.js';
import { type DataSource, fillTextSelect } from './data-source.js';
import type { TextData } from './data.js';
import { $, download, el, fmt } from './dom.js';
import { finetuneMethodNames, methodDefaults, parseOptions, type DomainPerplexity } from './finetune.js';
import { JobClient } from './job-client.js';
import type { FromJob, JobFile } from './job-protocol.js';
import { ModelSource } from './model-source.js';
import type { RunPanel } from './run-panel.js';

export interface FinetuneHost {
  runs: RunPanel[];
  data: DataSource;
  backend(): string;
  resize: RedrawOnResize;
  onChange(): void;
}

type State = 'idle' | 'preparing' | 'training' | 'done' | 'failed';

export class FinetuneView {
  state: State = 'idle';
  counts?: ParameterCounts;
  domains: DomainPerplexity[] = [];
  losses: [number, number][] = [];
  steps = 0;
  adapters: NodeSpec[] = [];
  result?: JobFile[];
  runFiles?: JobFile[];
  mergeBlocked?: string;
  errors: string[] = [];
  private readonly job = new JobClient(
    () => new Worker(new URL('./job-worker.ts', import.meta.url), { type: 'module', name: 'finetune' }),
    (m) => this.onMessage(m),
    (message) => {
      this.error(message);
      this.setState('failed', '');
    },
  );
  private texts: TextData[] = [];
  private readonly source: ModelSource;
  private readonly method = $<HTMLSelectElement>('#ft-method');
  private readonly options = $<HTMLTextAreaElement>('#ft-options');
  private readonly target = $<HTMLSelectElement>('#ft-target');
  private readonly general = $<HTMLSelectElement>('#ft-general');
  private readonly chart = $<HTMLCanvasElement>('#ft-loss');

  constructor(
    private readonly registry: Registry,
    private readonly host: FinetuneHost,
  ) {
    this.source = new ModelSource($('#ft-model'), 'ft', host.runs, (m) => this.error(m));
    for (const name of finetuneMethodNames()) this.method.append(el('option', { value: name }, name));
    this.method.value = 'lora';
    this.method.addEventListener('change', () => this.showMethod());
    this.showMethod();
    for (const s of [this.target, this.general]) s.addEventListener('focus', () => void this.refreshTexts());
    $<HTMLInputElement>('#ft-file').addEventListener('change', (e) => void this.addText((e.target as HTMLInputElement).files?.[0]));
    $('#ft-run').addEventListener('click', () => void this.run());
    $('#ft-stop').addEventListener('click', () => this.job.notify({ type: 'stop' }));
    $('#ft-save').addEventListener('click', () => this.save());
    const loads = $('#ft-load');
    for (const run of host.runs) {
      const b = el('button', { type: 'button', class: `ft-load-${run.name.toLowerCase()}` }, `Load it into run ${run.name}`);
      b.addEventListener('click', () => this.loadInto(run));
      loads.append(b);
    }
    host.resize.observe(this.chart);
    void this.refreshTexts();
  }

  /** What the e2e test reads through window.playground. */
  snapshot() {
    return {
      state: this.state,
      method: this.method.value,
      counts: this.counts,
      adapters: this.adapters,
      domains: this.domains.map((d) => ({ role: d.role, name: d.name, before: d.before.perplexity, after: d.after?.perplexity })),
      losses: this.losses,
      steps: this.steps,
      files: this.result?.map((f) => f.name) ?? [],
      runFiles: this.runFiles?.map((f) => f.name) ?? [],
      mergeBlocked: this.mergeBlocked,
      errors: this.errors,
    };
  }

  draw(): void {
    lineChart(this.chart, [{ name: 'train loss', color: '#7c3aed', points: this.losses }], { title: 'Fine-tuning loss (fine-tuning text)' });
  }

  /** Fill both text choices from the page's texts; keeps the current choices where they still exist. */
  async refreshTexts(prefer?: string): Promise<void> {
    this.texts = await this.host.data.texts();
    // The base's domain defaults to the first text (the bundled corpus), the fine-tuning text to the last.
    fillTextSelect(this.general, this.texts, 0);
    fillTextSelect(this.target, this.texts, this.texts.length - 1);
    if (prefer) this.target.value = prefer;
  }

  private showMethod(): void {
    const name = this.method.value;
    try {
      $('#ft-desc').textContent = finetuneMethod(name, 'method').description;
      this.options.value = JSON.stringify(methodDefaults(this.registry, name), null, 1);
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  private async addText(file: File | undefined): Promise<void> {
    if (!file) return;
    this.clearError();
    try {
      const t = await this.host.data.addTextFile(file);
      await this.refreshTexts(t.name);
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  private error(message: string): void {
    this.errors.push(message);
    $('#ft-error').textContent = message;
  }

  private clearError(): void {
    $('#ft-error').textContent = '';
  }

  private setState(s: State, status: string): void {
    this.state = s;
    $('#ft-status').textContent = status;
    this.host.onChange();
  }

  private async run(): Promise<void> {
    if (this.state === 'preparing' || this.state === 'training') return;
    this.clearError();
    try {
      const base = this.source.take();
      const options = parseOptions(this.options.value);
      await this.refreshTexts();
      const pick = (name: string, what: string) => {
        const t = this.texts.find((x) => x.name === name);
        if (!t) throw new Error(`choose ${what}`);
        return t;
      };
      const target = pick(this.target.value, 'the fine-tuning text (add a text file)');
      const general = pick(this.general.value, "the base's domain");
      const steps = Number($<HTMLInputElement>('#ft-steps').value);
      if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a positive integer (got "${$<HTMLInputElement>('#ft-steps').value}")`);
      const train: Partial<TrainConfig> = { steps };
      const lrText = $<HTMLInputElement>('#ft-lr').value.trim();
      if (lrText) {
        const lr = Number(lrText);
        if (!(lr > 0)) throw new Error(`the learning rate must be a positive number (got "${lrText}")`);
        train.lr = lr;
      }
      this.counts = undefined;
      this.domains = [];
      this.losses = [];
      this.result = undefined;
      this.runFiles = undefined;
      this.mergeBlocked = undefined;
      this.adapters = [];
      this.steps = steps;
      this.render();
      this.setState('preparing', `preparing ${this.method.value} on ${base.name}…`);
      this.job.send(
        { type: 'finetune', backend: this.host.backend(), files: base.files, source: base.name, method: this.method.value, options, target, general, train },
        base.files.map((f) => f.bytes),
      );
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  private onMessage(m: FromJob): void {
    switch (m.type) {
      case 'backend':
        $('#ft-backend').textContent = `backend: ${m.backend}`;
        $('#ft-backend').title = m.reason;
        break;
      case 'progress':
        $('#ft-status').textContent = m.phase;
        break;
      case 'ft-ready':
        this.counts = m.counts;
        this.domains = m.domains;
        this.adapters = m.adapters;
        this.steps = m.steps;
        this.setState('training', `training ${m.method}: step 0 of ${m.steps}`);
        break;
      case 'ft-step':
        this.losses.push([m.step, m.loss]);
        $<HTMLProgressElement>('#ft-progress').value = m.step / m.steps;
        $('#ft-status').textContent = `training: step ${m.step} of ${m.steps} · loss ${m.loss.toFixed(3)}`;
        this.host.onChange();
        return;
      case 'ft-done':
        this.domains = m.domains;
        this.result = m.files;
        this.runFiles = m.runFiles;
        this.mergeBlocked = m.mergeBlocked;
        this.setState('done', `done: ${m.steps} steps`);
        break;
      case 'error':
        this.error(m.message);
        this.setState('failed', '');
        break;
      case 'compressed':
        return;
    }
    this.render();
  }

  private render(): void {
    const c = this.counts;
    const counts = $('#ft-counts');
    counts.textContent = '';
    if (c) {
      const total = c.trainable + c.frozen;
      counts.append(
        el('span', { class: 'ft-trainable' }, `trainable ${fmt(c.trainable)}`),
        ` (${((100 * c.trainable) / Math.max(1, total)).toFixed(2)} %; adapters add ${fmt(c.added)}) · `,
        el('span', { class: 'ft-frozen' }, `frozen ${fmt(c.frozen)}`),
        ` · base ${fmt(c.base)} · adapters: ${this.adapters.map((a) => (typeof a === 'string' ? a : a.type)).join(', ') || 'none (every base weight trains)'}`,
      );
      counts.dataset.trainable = String(c.trainable);
      counts.dataset.frozen = String(c.frozen);
    }
    const table = $<HTMLTableElement>('#ft-perplexity');
    table.textContent = '';
    if (this.domains.length) {
      const head = el('tr');
      for (const h of ['domain', 'text', 'perplexity before', 'after', 'change']) head.append(el('th', {}, h));
      table.append(head);
      for (const d of this.domains) {
        const after = d.after?.perplexity;
        const tr = el('tr', { 'data-role': d.role });
        tr.append(
          el('td', {}, d.role === 'target' ? 'fine-tuning text' : "base's domain"),
          el('td', {}, d.name),
          el('td', { class: 'before' }, d.before.perplexity.toFixed(3)),
          el('td', { class: 'after' }, after === undefined ? '…' : after.toFixed(3)),
          el('td', {}, after === undefined ? '' : `${after >= d.before.perplexity ? '+' : ''}${((100 * after) / d.before.perplexity - 100).toFixed(1)} %`),
        );
        table.append(tr);
      }
    }
    $<HTMLButtonElement>('#ft-save').disabled = !this.result;
    this.host.onChange();
  }

  /** The fine-tuned model (adapters folded into the base) trains on or generates in a run. */
  private loadInto(run: RunPanel): void {
    if (!this.runFiles) {
      this.error('fine-tune first');
      return;
    }
    if (this.runFiles.length === 0) {
      this.error(this.mergeBlocked ?? 'the adapters cannot be folded into the base');
      return;
    }
    // The run's worker takes (and detaches) the buffers it is given: send copies.
    void run.loadFiles(this.runFiles.map((f) => ({ name: f.name, bytes: f.bytes.slice(0) })));
  }

  private save(): void {
    if (!this.result) {
      this.error('fine-tune first');
      return;
    }
    for (const f of this.result) download(f.name, new Blob([f.bytes], { type: f.name.endsWith('.json') ? 'application/json' : 'application/octet-stream' }));
  }
}
