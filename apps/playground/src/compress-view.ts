/**
 * The Compress section: pick a model (a run's model or checkpoint files) and a method of
 * `@moelab/compress` — quantize (bits, scale group, experts or every matrix), prune (score, ratio),
 * merge (MC-SMoE, groups), steer (SteerMoE, two texts), MoE-Pruner (sparsity, distillation steps), EEP
 * (ratio, search and merging budget) or SCMoE (beta, weak rank) — run it in a worker (job-worker.ts, compress.ts) on the page's data, and see
 * the size, parameters and perplexity before and after and a chart of the per-expert scores; download
 * the compressed checkpoint or load it into a run.
 */
import type { PruneScore } from '@moelab/compress';
import type { BarGroup, RedrawOnResize } from './charts.js';
import { barChart } from './charts.js';
import { COMPRESS_KINDS, type CompressMethod, type CompressResult, PRUNE_SCORES, QUANT_BITS } from './compress.js';
import type { TextData } from './data.js';
import { type DataSource, fillTextSelect } from './data-source.js';
import { $, download, el, fmt } from './dom.js';
import { JobClient } from './job-client.js';
import type { FromJob, JobFile } from './job-protocol.js';
import { ModelSource } from './model-source.js';
import type { RunPanel } from './run-panel.js';

export interface CompressHost {
  runs: RunPanel[];
  /** The page's texts: calibration and measurement use the Build section's choice; steering picks two. */
  data: DataSource;
  backend(): string;
  resize: RedrawOnResize;
  onChange(): void;
}

type State = 'idle' | 'running' | 'done' | 'failed';
type Result = Omit<CompressResult, 'files' | 'runFiles'>;

export class CompressView {
  state: State = 'idle';
  result?: Result;
  files?: JobFile[];
  runFiles?: JobFile[];
  errors: string[] = [];
  /** Bars drawn by the last draw of the score chart (the e2e test checks it). */
  barsDrawn = 0;
  private readonly job = new JobClient(
    () => new Worker(new URL('./job-worker.ts', import.meta.url), { type: 'module', name: 'compress' }),
    (m) => this.onMessage(m),
    (message) => {
      this.error(message);
      this.setState('failed', '');
    },
  );
  private readonly source: ModelSource;
  private readonly method = $<HTMLSelectElement>('#cp-method');
  private readonly chart = $<HTMLCanvasElement>('#cp-scores');
  private readonly toward = $<HTMLSelectElement>('#cp-toward');
  private readonly away = $<HTMLSelectElement>('#cp-away');
  private texts: TextData[] = [];

  constructor(private readonly host: CompressHost) {
    this.source = new ModelSource($('#cp-model'), 'cp', host.runs, (m) => this.error(m));
    for (const b of QUANT_BITS) $('#cp-bits').append(el('option', { value: String(b) }, String(b)));
    $<HTMLSelectElement>('#cp-bits').value = '4';
    for (const s of PRUNE_SCORES) $('#cp-score').append(el('option', { value: s }, s));
    this.method.addEventListener('change', () => this.showMethod());
    this.showMethod();
    $('#cp-run').addEventListener('click', () => void this.run());
    $('#cp-save').addEventListener('click', () => this.save());
    const loads = $('#cp-load');
    for (const run of host.runs) {
      const b = el('button', { type: 'button', class: `cp-load-${run.name.toLowerCase()}` }, `Load it into run ${run.name}`);
      b.addEventListener('click', () => this.loadInto(run));
      loads.append(b);
    }
    host.resize.observe(this.chart);
    for (const s of [this.toward, this.away]) s.addEventListener('focus', () => void this.refreshTexts());
    $<HTMLInputElement>('#cp-file').addEventListener('change', (e) => void this.addText((e.target as HTMLInputElement).files?.[0]));
    void this.refreshTexts();
  }

  /** Fill the steering choices from the page's texts ("away" defaults to the first, "toward" to the last). */
  async refreshTexts(prefer?: string): Promise<void> {
    this.texts = await this.host.data.texts();
    fillTextSelect(this.away, this.texts, 0);
    fillTextSelect(this.toward, this.texts, this.texts.length - 1);
    if (prefer) this.toward.value = prefer;
  }

  private async addText(file: File | undefined): Promise<void> {
    if (!file) return;
    $('#cp-error').textContent = '';
    try {
      const t = await this.host.data.addTextFile(file);
      await this.refreshTexts(t.name);
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  /** What the e2e test reads through window.playground. */
  snapshot() {
    return {
      state: this.state,
      method: this.method.value,
      result: this.result,
      files: this.files?.map((f) => f.name) ?? [],
      barsDrawn: this.barsDrawn,
      errors: this.errors,
    };
  }

  draw(): void {
    const groups: BarGroup[] = (this.result?.experts ?? []).map((l) => ({
      label: l.layer.replace(/^transformer\.layers\.(\d+)\.ffn$/, 'layer $1'),
      values: l.values,
      hollow: l.kept?.map((k) => !k) ?? l.steer?.map((r) => r === 'block'),
      // Steering colours the forced experts only (the rest grey).
      colorIndex: l.group ?? l.steer?.map((r, e) => (r === 'force' ? e : -1)),
    }));
    this.barsDrawn = barChart(this.chart, groups, { title: this.result ? `Per expert: ${this.result.score}` : 'Per-expert scores' });
  }

  private showMethod(): void {
    for (const kind of COMPRESS_KINDS) $(`#cp-${kind}`).hidden = kind !== this.method.value;
  }

  private methodFromForm(): CompressMethod {
    const num = (sel: string) => Number($<HTMLInputElement>(sel).value);
    switch (this.method.value) {
      case 'quantize':
        return {
          kind: 'quantize',
          bits: num('#cp-bits'),
          group: num('#cp-group'),
          scope: $<HTMLSelectElement>('#cp-scope').value === 'all' ? 'all' : 'experts',
        };
      case 'prune':
        return {
          kind: 'prune',
          score: $<HTMLSelectElement>('#cp-score').value as PruneScore,
          ratio: num('#cp-ratio'),
          preserveSuper: $<HTMLInputElement>('#cp-super').checked,
        };
      case 'steer': {
        const pick = (name: string, what: string) => {
          const t = this.texts.find((x) => x.name === name);
          if (!t) throw new Error(`choose the text to steer ${what}`);
          return t;
        };
        return {
          kind: 'steer',
          toward: pick(this.toward.value, 'toward (add a text file)'),
          away: pick(this.away.value, 'away from'),
          activate: num('#cp-activate'),
          deactivate: num('#cp-deactivate'),
        };
      }
      case 'moe-pruner':
        return { kind: 'moe-pruner', sparsity: num('#cp-sparsity'), distilSteps: num('#cp-distil') };
      case 'eep':
        return {
          kind: 'eep',
          ratio: num('#cp-eep-ratio'),
          population: num('#cp-population'),
          generations: num('#cp-generations'),
          mergeGenerations: num('#cp-merge-generations'),
        };
      case 'scmoe':
        return { kind: 'scmoe', beta: num('#cp-beta'), rank: num('#cp-rank') };
      default:
        return { kind: 'merge', groups: num('#cp-groups'), align: $<HTMLInputElement>('#cp-align').checked };
    }
  }

  private error(message: string): void {
    this.errors.push(message);
    $('#cp-error').textContent = message;
  }

  private setState(s: State, status: string): void {
    this.state = s;
    $('#cp-status').textContent = status;
    this.host.onChange();
  }

  private async run(): Promise<void> {
    if (this.state === 'running') return;
    $('#cp-error').textContent = '';
    try {
      const model = this.source.take();
      if (this.method.value === 'steer') await this.refreshTexts();
      const method = this.methodFromForm();
      const data = await this.host.data.current();
      this.result = undefined;
      this.files = undefined;
      this.runFiles = undefined;
      this.render();
      this.setState('running', `${method.kind} on ${model.name}…`);
      this.job.send(
        { type: 'compress', backend: this.host.backend(), files: model.files, method, data },
        model.files.map((f) => f.bytes),
      );
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  private onMessage(m: FromJob): void {
    switch (m.type) {
      case 'backend':
        $('#cp-backend').textContent = `backend: ${m.backend}`;
        $('#cp-backend').title = m.reason;
        return;
      case 'progress':
        $('#cp-status').textContent = `${m.phase}…`;
        return;
      case 'compressed':
        this.result = m.result;
        this.files = m.files;
        this.runFiles = m.runFiles;
        this.render();
        this.setState('done', 'done');
        return;
      case 'error':
        this.error(m.message);
        this.setState('failed', '');
        return;
      default:
        return;
    }
  }

  private render(): void {
    const r = this.result;
    $('#cp-summary').textContent = r?.summary ?? '';
    const g = r?.generated;
    $('#cp-generated').textContent = g ? `prompt: ${g.prompt}\ngreedy: …${g.greedy}\nSCMoE:  …${g.contrast}` : '';
    const table = $<HTMLTableElement>('#cp-table');
    table.textContent = '';
    if (r) {
      const head = el('tr');
      for (const h of ['', 'before', 'after', 'change']) head.append(el('th', {}, h));
      table.append(head);
      const change = (a: number, b: number) => `${b >= a ? '+' : ''}${((100 * b) / a - 100).toFixed(1)} %`;
      const rows: [string, string, number, number, (n: number) => string][] = [
        ['model.safetensors bytes', 'bytes', r.size.before.bytes, r.size.after.bytes, fmt],
        ['parameters', 'parameters', r.size.before.parameters, r.size.after.parameters, fmt],
        ['distinct parameters', 'distinct', r.size.before.distinctParameters, r.size.after.distinctParameters, fmt],
        [
          `perplexity (${r.perplexity.data}, ${fmt(r.perplexity.tokens)} validation bytes)`,
          'perplexity',
          r.perplexity.before,
          r.perplexity.after,
          (n) => n.toFixed(3),
        ],
      ];
      const o = r.otherPerplexity;
      if (o) rows.push([`perplexity (${o.data}, ${fmt(o.tokens)} validation bytes)`, 'other-perplexity', o.before, o.after, (n) => n.toFixed(3)]);
      for (const [label, key, a, b, f] of rows) {
        const tr = el('tr', { 'data-row': key });
        tr.append(el('td', {}, label), el('td', { class: 'before' }, f(a)), el('td', { class: 'after' }, f(b)), el('td', {}, change(a, b)));
        table.append(tr);
      }
    }
    $<HTMLButtonElement>('#cp-save').disabled = !this.files?.length;
    this.host.onChange();
  }

  private save(): void {
    if (!this.files?.length) {
      this.error(this.files ? 'this method writes no file' : 'compress a model first');
      return;
    }
    for (const f of this.files) download(f.name, new Blob([f.bytes], { type: f.name.endsWith('.json') ? 'application/json' : 'application/octet-stream' }));
  }

  private loadInto(run: RunPanel): void {
    if (!this.runFiles) {
      this.error('compress a model first');
      return;
    }
    if (this.runFiles.length === 0) {
      this.error(
        this.result?.generated
          ? 'SCMoE changes no weight: use `moelab generate --scmoe BETA --scmoe-rank R` on the checkpoint'
          : 'steering changes no weight: download steer.json and pass it to `moelab eval` or `moelab generate` with --steer',
      );
      return;
    }
    // The run's worker takes (and detaches) the buffers it is given: send copies.
    void run.loadFiles(this.runFiles.map((f) => ({ name: f.name, bytes: f.bytes.slice(0) })));
  }
}
