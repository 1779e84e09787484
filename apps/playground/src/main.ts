/**
 * The playground page: build a model spec (presets, registry choice lists, schema forms, JSON), pick
 * data, and train two runs side by side in Web Workers with live charts, routing views, generation
 * and checkpoints.
 */
import { buildModel, defaultTrainConfig, type LanguageModel, type Module, modelSummary, type NodeSpec, type TrainConfig, tf } from '@moelab/core';
import { BACKEND_CHOICES } from './backends.js';
import { expertColor, heatmap, lineChart, type Series } from './charts.js';
import { splitText, type TextData } from './data.js';
import { SpecForm } from './form.js';
import type { FromWorker, LayerRouting, RunState, ToWorker, TokenRouting } from './protocol.js';
import { createPlaygroundRegistry } from './registry.js';

const registry = createPlaygroundRegistry();
const $ = <T extends HTMLElement = HTMLElement>(sel: string, root: ParentNode = document): T => {
  const e = root.querySelector(sel);
  if (!e) throw new Error(`missing element ${sel}`);
  return e as T;
};
function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const fmt = (n: number) => n.toLocaleString('en-US');

// ---------------------------------------------------------------- spec editing

const SCRATCH: NodeSpec = { type: 'transformer-lm', vocabSize: 256, dModel: 32, contextLength: 32 };
let spec: NodeSpec = SCRATCH;
let trainOverrides: Partial<TrainConfig> = {};

const form = new SpecForm($('#form'), {
  registry,
  onChange(next) {
    spec = next;
    writeSpecJson();
    scheduleSummary();
  },
});
const specJson = $<HTMLTextAreaElement>('#spec-json');

function writeSpecJson(): void {
  specJson.value = JSON.stringify(spec, null, 2);
  $('#spec-error').textContent = '';
}

specJson.addEventListener('input', () => {
  try {
    const parsed = JSON.parse(specJson.value) as NodeSpec;
    if (typeof parsed !== 'string' && (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)))
      throw new Error('the spec must be a model node: an object with a "type" field');
    spec = parsed;
    $('#spec-error').textContent = '';
    form.set(spec);
    scheduleSummary();
  } catch (e) {
    $('#spec-error').textContent = `spec JSON: ${(e as Error).message}`;
  }
});

let summaryTimer: ReturnType<typeof setTimeout> | undefined;
function scheduleSummary(): void {
  clearTimeout(summaryTimer);
  summaryTimer = setTimeout(updateSummary, 150);
}

/** Build the spec on the page's plain-JS backend to count parameters (and surface builder errors). */
function updateSummary(): void {
  const out = $('#summary');
  const err = $('#build-error');
  let model: (Module & LanguageModel) | undefined;
  try {
    const built = buildModel(spec, registry, 0);
    model = built;
    const s = modelSummary(built);
    out.textContent = `${fmt(s.parameters)} parameters · ${fmt(s.activeParameters)} active per token · ${fmt(s.nonEmbeddingParameters)} non-embedding · ${fmt(s.forwardFlopsPerToken)} FLOPs per token (forward)`;
    out.dataset.parameters = String(s.parameters);
    out.dataset.active = String(s.activeParameters);
    err.textContent = '';
  } catch (e) {
    out.textContent = '';
    delete out.dataset.parameters;
    err.textContent = (e as Error).message;
  } finally {
    model?.dispose();
  }
}

function setSpec(next: NodeSpec, train: Partial<TrainConfig>): void {
  spec = structuredClone(next);
  trainOverrides = { ...train };
  form.set(spec);
  writeSpecJson();
  renderTrainForm();
  scheduleSummary();
}

// ---------------------------------------------------------------- presets and the registry

const presetSelect = $<HTMLSelectElement>('#preset');
const presetDefinitions = registry.presets();
for (const p of presetDefinitions) presetSelect.append(el('option', { value: p.name }, p.name));
presetSelect.value = registry.hasPreset('moe-micro') ? 'moe-micro' : (presetDefinitions[0]?.name ?? '');
const showPresetDesc = () => {
  $('#preset-desc').textContent = presetDefinitions.find((p) => p.name === presetSelect.value)?.description ?? '';
};
presetSelect.addEventListener('change', showPresetDesc);
function usePreset(name: string): void {
  const p = registry.preset(name);
  setSpec(p.spec, p.train);
}
$('#use-preset').addEventListener('click', () => usePreset(presetSelect.value));
$('#scratch').addEventListener('click', () => setSpec(SCRATCH, { batchSize: 8, seqLen: 32, steps: 200, evalEvery: 10, evalBatches: 2, lr: 1e-2, warmup: 5 }));

function renderRegistry(): void {
  const root = $('#registry-kinds');
  root.replaceChildren();
  for (const kind of registry.kinds()) {
    const row = el('div', { class: 'field' });
    const sel = el('select', { 'data-kind': kind });
    for (const name of registry.names(kind)) sel.append(el('option', { value: name }, name));
    const desc = el('div', { class: 'desc' });
    const show = () => {
      const e = registry.get(kind, sel.value);
      desc.textContent = `${e.description}${e.reference ? ` (${e.reference})` : ''}`;
    };
    sel.addEventListener('change', show);
    show();
    row.append(el('label', {}, `${kind} (${registry.names(kind).length})`), sel, desc);
    root.append(row);
  }
}

// ---------------------------------------------------------------- training config

const TRAIN_FIELDS: (keyof TrainConfig)[] = ['steps', 'batchSize', 'seqLen', 'lr', 'warmup', 'weightDecay', 'clip', 'evalEvery', 'evalBatches', 'seed'];

function renderTrainForm(): void {
  const root = $('#train-form');
  root.replaceChildren();
  const cfg = { ...defaultTrainConfig, ...trainOverrides };
  for (const key of TRAIN_FIELDS) {
    const row = el('div', { class: 'field' });
    const input = el('input', { type: 'text', id: `train-${key}`, inputmode: 'decimal' });
    input.value = String(cfg[key]);
    const err = el('div', { class: 'error' });
    input.addEventListener('change', () => {
      const n = Number(input.value);
      const isInt = key !== 'lr' && key !== 'weightDecay' && key !== 'clip';
      if (!Number.isFinite(n) || n < 0 || (isInt && !Number.isInteger(n))) {
        err.textContent = `${key} must be a ${isInt ? 'non-negative integer' : 'non-negative number'} (got ${JSON.stringify(input.value)})`;
        return;
      }
      err.textContent = '';
      trainOverrides = { ...trainOverrides, [key]: n };
    });
    row.append(el('label', {}, key), input, el('span'), err);
    root.append(row);
  }
}

function trainConfig(): Partial<TrainConfig> {
  return { ...defaultTrainConfig, ...trainOverrides };
}

// ---------------------------------------------------------------- data

let brown: TextData | undefined;
let ownFile: TextData | undefined;

async function loadBrown(): Promise<TextData> {
  if (brown) return brown;
  const [train, val] = await Promise.all(
    ['corpus/brown-train.txt', 'corpus/brown-val.txt'].map(async (p) => {
      const r = await fetch(p);
      if (!r.ok) throw new Error(`could not load the bundled corpus (${p}: HTTP ${r.status})`);
      return r.text();
    }),
  );
  brown = { name: 'brown (bundled slice)', train: train!, val: val! };
  return brown;
}

async function currentData(): Promise<TextData> {
  const mode = document.querySelector<HTMLInputElement>('input[name=data]:checked')?.value;
  if (mode === 'file') {
    if (!ownFile) throw new Error('choose or drop a text file first (or pick the bundled corpus)');
    return ownFile;
  }
  return loadBrown();
}

async function useTextFile(file: File): Promise<void> {
  const status = $('#data-status');
  const err = $('#data-error');
  err.textContent = '';
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new Error(`${file.name}: not UTF-8 text`);
    }
    ownFile = splitText(file.name, text);
    $<HTMLInputElement>('input[name=data][value=file]').checked = true;
    status.textContent = `${file.name}: ${fmt(ownFile.train.length)} train + ${fmt(ownFile.val.length)} validation characters`;
  } catch (e) {
    ownFile = undefined;
    err.textContent = (e as Error).message;
  }
}

$<HTMLInputElement>('#data-file').addEventListener('change', (e) => {
  const f = (e.target as HTMLInputElement).files?.[0];
  if (f) void useTextFile(f);
});
const drop = $('#data-drop');
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const f = e.dataTransfer?.files?.[0];
  if (f) void useTextFile(f);
});

// ---------------------------------------------------------------- runs

interface LayerHistory {
  numExperts: number;
  loads: number[][];
  entropy: [number, number][];
}

const COLORS: Record<string, string> = { A: '#2563eb', B: '#ea580c' };

class RunPanel {
  readonly root: HTMLElement;
  worker?: Worker;
  state: RunState = 'idle';
  backend = '';
  steps = 0;
  losses: [number, number][] = [];
  evals: [number, number][] = [];
  speed: [number, number][] = [];
  layers = new Map<string, LayerHistory>();
  sample?: { step: number; tokens: number[]; layers: TokenRouting[] };
  heatPainted = 0;
  lastSaved?: { step: number; valLoss: number };
  loaded?: { step: number; valLoss: number };
  generated = '';
  errors: string[] = [];
  private drawPending = false;

  constructor(
    readonly name: string,
    host: HTMLElement,
  ) {
    this.root = el('div', { class: 'run', id: `run-${name.toLowerCase()}` });
    this.root.innerHTML = `
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
      <canvas class="loss" width="480" height="150"></canvas>
      <canvas class="speed" width="480" height="90"></canvas>
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
        <label>Load <input class="load" type="file" multiple accept=".json,.safetensors" /></label></div>
      <div class="meta ckpt-status"></div>`;
    host.append(this.root);
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
    this.q<HTMLInputElement>('.load').addEventListener('change', (e) => void this.load((e.target as HTMLInputElement).files));
    this.q('.sample-layer').addEventListener('change', () => this.drawSample());
    this.draw();
  }

  q<T extends HTMLElement = HTMLElement>(sel: string): T {
    return $<T>(sel, this.root);
  }

  private ensureWorker(): Worker {
    if (!this.worker) {
      this.worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: `run-${this.name}` });
      this.worker.onmessage = (e: MessageEvent<FromWorker>) => this.onMessage(e.data);
      this.worker.onerror = (e) => this.error(`worker failed: ${e.message}`);
    }
    return this.worker;
  }

  private send(msg: ToWorker, transfer: Transferable[] = []): void {
    if (!this.worker && msg.type !== 'init' && msg.type !== 'load') {
      this.error('build a model (or load a checkpoint) first');
      return;
    }
    this.ensureWorker().postMessage(msg, transfer);
  }

  private error(message: string): void {
    this.errors.push(message);
    this.q('.run-error').textContent = message;
  }

  private reset(): void {
    this.losses = [];
    this.evals = [];
    this.speed = [];
    this.layers.clear();
    this.sample = undefined;
    this.q('.layers').replaceChildren();
    this.q('.run-error').textContent = '';
  }

  async build(): Promise<void> {
    try {
      const data = await currentData();
      this.reset();
      this.send({ type: 'init', backend: backendSelect.value, spec, train: trainConfig(), data });
    } catch (e) {
      this.error((e as Error).message);
    }
  }

  async load(files: FileList | null): Promise<void> {
    if (!files || files.length === 0) return;
    try {
      const list = await Promise.all([...files].map(async (f) => ({ name: f.name, bytes: await f.arrayBuffer() })));
      const data = await currentData();
      this.reset();
      this.q('.ckpt-status').textContent = `loading ${list.map((f) => f.name).join(' + ')}…`;
      this.send(
        { type: 'load', backend: backendSelect.value, files: list, data },
        list.map((f) => f.bytes),
      );
    } catch (e) {
      this.error((e as Error).message);
    }
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
        this.losses.push([m.step, m.loss]);
        this.speed.push([m.step, m.tokensPerSec]);
        this.q('.step').textContent = String(m.step);
        this.q('.numbers').textContent = `loss ${m.loss.toFixed(3)} · ${fmt(Math.round(m.tokensPerSec))} tokens/s · lr ${m.lr.toExponential(1)}`;
        this.addRouting(m.step, m.routing);
        break;
      case 'eval':
        this.evals = this.evals.filter(([s]) => s !== m.step);
        this.evals.push([m.step, m.loss]);
        break;
      case 'sample':
        this.sample = m;
        this.drawSample();
        break;
      case 'generated':
        this.generated = m.text;
        this.q('.generated').textContent = `${m.prompt}${m.text}`;
        break;
      case 'saved': {
        this.lastSaved = { step: m.step, valLoss: m.valLoss };
        download('config.json', new Blob([m.configJson], { type: 'application/json' }));
        download('model.safetensors', new Blob([m.weights], { type: 'application/octet-stream' }));
        this.q('.ckpt-status').textContent = `saved step ${m.step} (validation loss ${m.valLoss.toFixed(4)})`;
        break;
      }
      case 'loaded':
        this.loaded = { step: m.config.step, valLoss: m.valLoss };
        this.q('.ckpt-status').textContent = `loaded checkpoint: step ${m.config.step}, validation loss ${m.valLoss.toFixed(4)}`;
        setSpec(m.config.spec, m.config.train ?? {});
        break;
      case 'error':
        this.error(m.message);
        if (this.q('.ckpt-status').textContent?.startsWith('loading')) this.q('.ckpt-status').textContent = '';
        break;
    }
    this.scheduleDraw();
  }

  private addRouting(step: number, routing: LayerRouting[]): void {
    for (const r of routing) {
      let h = this.layers.get(r.layer);
      if (!h) {
        h = { numExperts: r.numExperts, loads: [], entropy: [] };
        this.layers.set(r.layer, h);
        const box = el('div', { class: 'layer', 'data-layer': r.layer });
        box.append(el('div', { class: 'meta' }, `MoE layer ${r.layer} · ${r.numExperts} experts`));
        box.append(el('canvas', { class: 'heat', width: '480', height: String(Math.max(40, Math.min(160, 16 + r.numExperts * 8))) }));
        box.append(el('canvas', { class: 'entropy', width: '480', height: '70' }));
        this.q('.layers').append(box);
        const opt = el('option', { value: r.layer }, r.layer);
        this.q('.sample-layer').append(opt);
      }
      h.loads.push(r.load);
      if (r.entropy !== undefined) h.entropy.push([step, r.entropy]);
    }
  }

  private drawSample(): void {
    const box = this.q('.sample');
    box.replaceChildren();
    if (!this.sample) return;
    const sel = this.q<HTMLSelectElement>('.sample-layer');
    for (const l of this.sample.layers) if (![...sel.options].some((o) => o.value === l.layer)) sel.append(el('option', { value: l.layer }, l.layer));
    const layer = this.sample.layers.find((l) => l.layer === sel.value) ?? this.sample.layers[0];
    if (!layer) {
      box.textContent = 'this model has no per-token expert assignments (a dense model, or a router that mixes instead of dispatching)';
      return;
    }
    if (sel.value !== layer.layer) sel.value = layer.layer;
    this.sample.tokens.forEach((t, i) => {
      const ch = t === 10 ? '↵\n' : t >= 32 && t < 127 ? String.fromCharCode(t) : '·';
      const e = layer.expert[i] ?? -1;
      const span = el('span', { 'data-expert': String(e) }, ch);
      span.style.background = expertColor(e, layer.numExperts, 0.45);
      span.title = e >= 0 ? `token ${i}: expert ${e}` : `token ${i}: no expert`;
      box.append(span);
    });
  }

  private scheduleDraw(): void {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.draw();
      drawCompare();
    });
  }

  draw(): void {
    const c = COLORS[this.name] ?? '#333';
    lineChart(
      this.q<HTMLCanvasElement>('.loss'),
      [
        { name: 'train', color: c, points: this.losses },
        { name: 'validation', color: '#16a34a', points: this.evals, dashed: true },
      ],
      { title: `Run ${this.name}: loss (nats/token)` },
    );
    lineChart(this.q<HTMLCanvasElement>('.speed'), [{ name: 'tokens/s', color: '#7c3aed', points: this.speed }], { title: 'tokens / s' });
    let painted = 0;
    for (const box of this.q('.layers').querySelectorAll<HTMLElement>('.layer')) {
      const h = this.layers.get(box.dataset.layer ?? '');
      if (!h) continue;
      painted += heatmap($<HTMLCanvasElement>('canvas.heat', box), h.loads, { title: 'expert load over steps', numExperts: h.numExperts });
      lineChart($<HTMLCanvasElement>('canvas.entropy', box), [{ name: 'entropy', color: '#0891b2', points: h.entropy }], {
        title: `routing entropy (nats; uniform = ${Math.log(h.numExperts).toFixed(2)})`,
      });
    }
    this.heatPainted = painted;
  }

  snapshot() {
    return {
      state: this.state,
      backend: this.backend,
      steps: this.steps,
      losses: this.losses,
      evals: this.evals,
      speed: this.speed,
      layers: [...this.layers.entries()].map(([layer, h]) => ({ layer, numExperts: h.numExperts, recorded: h.loads.length, entropy: h.entropy.at(-1)?.[1] })),
      sampleLayers: this.sample?.layers.length ?? 0,
      heatPainted: this.heatPainted,
      lastSaved: this.lastSaved,
      loaded: this.loaded,
      generated: this.generated,
      errors: this.errors,
    };
  }
}

function download(name: string, blob: Blob): void {
  const a = el('a', { download: name });
  a.href = URL.createObjectURL(blob);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

const runs = [new RunPanel('A', $('#run-panels')), new RunPanel('B', $('#run-panels'))];

function drawCompare(): void {
  const series: Series[] = [];
  for (const r of runs) {
    if (r.losses.length) series.push({ name: `${r.name} train`, color: COLORS[r.name] ?? '#333', points: r.losses });
    if (r.evals.length) series.push({ name: `${r.name} val`, color: COLORS[r.name] ?? '#333', points: r.evals, dashed: true });
  }
  lineChart($<HTMLCanvasElement>('#compare'), series, { title: 'Runs A and B: train (solid) and validation (dashed) loss' });
}

// ---------------------------------------------------------------- start-up

const backendSelect = $<HTMLSelectElement>('#backend');
for (const b of BACKEND_CHOICES) backendSelect.append(el('option', { value: b }, b));
backendSelect.value = new URLSearchParams(location.search).get('backend') ?? 'auto';

declare global {
  interface Window {
    playground: unknown;
  }
}
window.playground = {
  runs: Object.fromEntries(runs.map((r) => [r.name, () => r.snapshot()])),
  spec: () => structuredClone(spec),
  summary: () => ({ ...$('#summary').dataset }),
};

async function startUp(): Promise<void> {
  // The page only builds models to count their parameters: the plain JS backend is enough.
  await tf.setBackend('cpu');
  renderRegistry();
  showPresetDesc();
  usePreset(presetSelect.value);
  drawCompare();
  $('#app-status').textContent = `${registry.kinds().length} registry kinds · ${registry.presetNames().length} presets`;
  document.body.dataset.ready = 'true';
  loadBrown()
    .then((b) => {
      $('#data-status').textContent = `${b.name}: ${fmt(b.train.length)} train + ${fmt(b.val.length)} validation characters`;
    })
    .catch((e) => {
      $('#data-error').textContent = (e as Error).message;
    });
}

void startUp().catch((e) => {
  $('#app-status').textContent = `start-up failed: ${(e as Error).message}`;
});
