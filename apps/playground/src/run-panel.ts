/**
 * One training run (A or B): its panel (controls, status, charts, routed tokens, generation,
 * checkpoint), and the Web Worker that builds, trains and samples its model.
 */
import type { NodeSpec, TrainConfig } from '@moelab/core';
import type { RedrawOnResize } from './charts.js';
import { downloadCheckpoint, readUploads } from './checkpoint-io.js';
import type { TextData } from './data.js';
import { $, el, fmt } from './dom.js';
import { downloadOnnx } from './onnx-download.js';
import type { FromWorker, RunState, ToWorker } from './protocol.js';
import { type RoutedSample, renderRoutedTokens } from './routed-tokens.js';
import { RunCharts } from './run-charts.js';

/** What a run takes from the rest of the page. */
export interface RunHost {
  /** The spec, training settings, backend choice and data a build uses. */
  spec(): NodeSpec;
  trainConfig(): Partial<TrainConfig>;
  backend(): string;
  data(): Promise<TextData>;
  /** A checkpoint was loaded: show its spec and settings in the Build section. */
  onLoaded(spec: NodeSpec, train: Partial<TrainConfig>): void;
  /** Something a chart shows changed (the page redraws once per animation frame). */
  onChange(): void;
  resize: RedrawOnResize;
}

const COLORS: Record<string, string> = { A: '#2563eb', B: '#ea580c' };

const PANEL_HTML = (name: string) => `
  <h2>Run ${name}</h2>
  <div class="row">
    <button type="button" class="build" title="build the current spec in this run (resets it)">Build from spec</button>
    <button type="button" class="start">Start</button>
    <button type="button" class="pause">Pause</button>
    <button type="button" class="stop">Stop</button>
  </div>
  <div class="meta"><span class="backend">backend: –</span> · <span class="state">idle</span> · step <span class="step">0</span> · <span class="numbers"></span></div>
  <div class="meta params"></div>
  <div class="error run-error"></div>
  <canvas class="loss"></canvas>
  <canvas class="speed"></canvas>
  <div class="layers"></div>
  <h3>Routed tokens <select class="sample-layer"></select></h3>
  <div class="sample"></div>
  <h3>Generate</h3>
  <div class="row"><input class="prompt" type="text" value="The " size="18" />
    <label>temp <input class="temperature" type="text" value="0.8" size="3" /></label>
    <button type="button" class="generate">Generate</button></div>
  <pre class="generated"></pre>
  <h3>Checkpoint</h3>
  <div class="row"><button type="button" class="save">Save (config.json + model.safetensors)</button>
    <button type="button" class="onnx" title="the current model as an ONNX inference graph">Download ONNX</button>
    <label>Load <input class="load" type="file" multiple accept=".json,.safetensors" /></label></div>
  <div class="meta ckpt-status"></div>`;

export class RunPanel {
  readonly root: HTMLElement;
  readonly color: string;
  readonly charts: RunCharts;
  private worker?: Worker;
  state: RunState = 'idle';
  backend = '';
  steps = 0;
  sample?: RoutedSample;
  lastSaved?: { step: number; valLoss: number };
  loaded?: { step: number; valLoss: number };
  generated = '';
  errors: string[] = [];
  private readonly exports: { resolve(m: { configJson: string; weights: ArrayBuffer; step: number }): void; reject(e: Error): void }[] = [];

  constructor(
    readonly name: string,
    parent: HTMLElement,
    private readonly host: RunHost,
  ) {
    this.color = COLORS[name] ?? '#333';
    this.root = el('div', { class: 'run', id: `run-${name.toLowerCase()}` });
    this.root.innerHTML = PANEL_HTML(name);
    parent.append(this.root);
    this.charts = new RunCharts(this.root, name, this.color, host.resize);
    this.q('.build').addEventListener('click', () => void this.build());
    this.q('.start').addEventListener('click', () => this.send({ type: 'start' }));
    this.q('.pause').addEventListener('click', () => this.send({ type: 'pause' }));
    this.q('.stop').addEventListener('click', () => this.send({ type: 'stop' }));
    this.q('.generate').addEventListener('click', () => {
      const temperature = Number(this.q<HTMLInputElement>('.temperature').value);
      this.send({
        type: 'generate',
        prompt: this.q<HTMLInputElement>('.prompt').value,
        maxNewTokens: 120,
        temperature: Number.isFinite(temperature) ? temperature : 0.8,
        topK: 0,
        seed: Date.now() % 1e6,
      });
    });
    this.q('.save').addEventListener('click', () => this.send({ type: 'save' }));
    this.q('.onnx').addEventListener('click', () => void downloadOnnx(this, this.q('.ckpt-status')));
    this.q<HTMLInputElement>('.load').addEventListener('change', (e) => void this.load((e.target as HTMLInputElement).files));
    this.q('.sample-layer').addEventListener('change', () => this.drawSample());
  }

  q<T extends HTMLElement = HTMLElement>(sel: string): T {
    return $<T>(sel, this.root);
  }

  /** Build the current spec in this run's worker (resets the run). */
  async build(): Promise<void> {
    try {
      const data = await this.host.data();
      this.reset();
      this.send({ type: 'init', backend: this.host.backend(), spec: this.host.spec(), train: this.host.trainConfig(), data });
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  /** Load an uploaded checkpoint (config.json + model.safetensors) into this run. */
  async load(files: FileList | null): Promise<void> {
    if (!files || files.length === 0) return;
    try {
      await this.loadFiles(await readUploads(files));
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  /** Load checkpoint files made on the page (e.g. an upcycled model) into this run. */
  async loadFiles(list: { name: string; bytes: ArrayBuffer }[]): Promise<void> {
    try {
      const data = await this.host.data();
      this.reset();
      this.q('.ckpt-status').textContent = `loading ${list.map((f) => f.name).join(' + ')}…`;
      this.send(
        { type: 'load', backend: this.host.backend(), files: list, data },
        list.map((f) => f.bytes),
      );
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  /** The run's model as checkpoint files (config.json + model.safetensors), without a download. */
  exportModel(): Promise<{ configJson: string; weights: ArrayBuffer; step: number }> {
    if (!this.worker) return Promise.reject(new Error(`run ${this.name} has no model: build one (or load a checkpoint) first`));
    return new Promise((resolve, reject) => {
      this.exports.push({ resolve, reject });
      this.send({ type: 'export' });
    });
  }

  draw(): void {
    this.charts.draw();
  }

  /** What the e2e test reads through window.playground. */
  snapshot() {
    const c = this.charts;
    return {
      state: this.state,
      backend: this.backend,
      steps: this.steps,
      losses: c.losses,
      evals: c.evals,
      speed: c.speed,
      layers: [...c.layers.entries()].map(([layer, h]) => ({ layer, numExperts: h.numExperts, recorded: h.loads.length, entropy: h.entropy.at(-1)?.[1] })),
      sampleLayers: this.sample?.layers.length ?? 0,
      heatPainted: c.heatPainted,
      lastSaved: this.lastSaved,
      loaded: this.loaded,
      generated: this.generated,
      errors: this.errors,
    };
  }

  private send(msg: ToWorker, transfer: Transferable[] = []): void {
    if (!this.worker) {
      if (msg.type !== 'init' && msg.type !== 'load') {
        this.error('build a model (or load a checkpoint) first');
        return;
      }
      this.worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: `run-${this.name}` });
      this.worker.onmessage = (e: MessageEvent<FromWorker>) => this.onMessage(e.data);
      this.worker.onerror = (e) => this.error(`worker failed: ${e.message}`);
    }
    this.worker.postMessage(msg, transfer);
  }

  private error(message: string): void {
    this.errors.push(message);
    this.q('.run-error').textContent = message;
  }

  private reset(): void {
    this.charts.reset();
    this.sample = undefined;
    this.q('.run-error').textContent = '';
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'ready':
        this.backend = m.backend;
        this.steps = m.steps;
        this.q('.backend').textContent = `backend: ${m.backend}`;
        this.q('.backend').title = m.reason;
        this.q('.step').textContent = String(m.step);
        this.q('.params').textContent = `${fmt(m.summary.parameters)} parameters · ${fmt(m.summary.activeParameters)} active per token · ${m.steps} steps`;
        break;
      case 'state':
        this.state = m.state;
        this.q('.state').textContent = m.state;
        break;
      case 'step':
        this.charts.addStep(m.step, m.loss, m.tokensPerSec);
        this.q('.step').textContent = String(m.step);
        this.q('.numbers').textContent = `loss ${m.loss.toFixed(3)} · ${fmt(Math.round(m.tokensPerSec))} tokens/s · lr ${m.lr.toExponential(1)}`;
        for (const layer of this.charts.addRouting(m.step, m.routing)) this.q('.sample-layer').append(el('option', { value: layer }, layer));
        break;
      case 'eval':
        this.charts.addEval(m.step, m.loss);
        break;
      case 'sample':
        this.sample = m;
        this.drawSample();
        break;
      case 'generated':
        this.generated = m.text;
        this.q('.generated').textContent = `${m.prompt}${m.text}`;
        break;
      case 'saved':
        this.lastSaved = { step: m.step, valLoss: m.valLoss };
        downloadCheckpoint(m.configJson, m.weights);
        this.q('.ckpt-status').textContent = `saved step ${m.step} (validation loss ${m.valLoss.toFixed(4)})`;
        break;
      case 'exported':
        this.exports.shift()?.resolve({ configJson: m.configJson, weights: m.weights, step: m.step });
        break;
      case 'loaded':
        this.loaded = { step: m.config.step, valLoss: m.valLoss };
        this.q('.ckpt-status').textContent = `loaded checkpoint: step ${m.config.step}, validation loss ${m.valLoss.toFixed(4)}`;
        this.host.onLoaded(m.config.spec, m.config.train ?? {});
        break;
      case 'error':
        // An export waiting for this worker failed with it (e.g. no model yet).
        this.exports.shift()?.reject(new Error(m.message));
        this.error(m.message);
        if (this.q('.ckpt-status').textContent?.startsWith('loading')) this.q('.ckpt-status').textContent = '';
        break;
    }
    this.host.onChange();
  }

  private drawSample(): void {
    renderRoutedTokens(this.q('.sample'), this.q<HTMLSelectElement>('.sample-layer'), this.sample);
  }
}
