/**
 * The playground page: build a model spec (presets, registry choice lists, schema forms, JSON), pick
 * data, and train two runs side by side in Web Workers with live charts, routing views, generation
 * and checkpoints. This file wires the sections together:
 *
 *   spec-editor.ts  the Build section (presets, registry browser, form <-> JSON, counts, training settings)
 *   data-source.ts  the bundled corpus or the user's text file
 *   run-panel.ts    a run: controls, its worker (worker.ts), charts (run-charts.ts), routed tokens,
 *                   generation, checkpoint save / load (checkpoint-io.ts)
 *   charts.ts       the canvas charts, sized for the screen's pixel ratio
 *   upcycle-view.ts dense runs or checkpoint files -> an upcycler -> provenance table -> train in a run
 *   finetune-view.ts a run's model or checkpoint files -> an adapter method -> trained in a job worker
 *                   (job-worker.ts, finetune.ts) -> parameter counts, perplexity on two domains
 *   compress-view.ts a run's model or checkpoint files -> quantize / prune / merge in a job worker
 *                   (compress.ts) -> size, perplexity, per-expert scores -> download or load into a run
 */
import { tf } from '@moelab/core';
import { BACKEND_CHOICES } from './backends.js';
import { lineChart, RedrawOnResize, type Series } from './charts.js';
import { CompressView } from './compress-view.js';
import { DataSource } from './data-source.js';
import { $, el } from './dom.js';
import { FinetuneView } from './finetune-view.js';
import { createPlaygroundRegistry } from './registry.js';
import { RunPanel } from './run-panel.js';
import { SpecEditor } from './spec-editor.js';
import { UpcycleView } from './upcycle-view.js';

const registry = createPlaygroundRegistry();
const editor = new SpecEditor(registry);
const data = new DataSource();

const backendSelect = $<HTMLSelectElement>('#backend');
for (const b of BACKEND_CHOICES) backendSelect.append(el('option', { value: b }, b));
backendSelect.value = new URLSearchParams(location.search).get('backend') ?? 'auto';

// Every chart is redrawn at most once per animation frame: after new data, a resize or a change of
// the device pixel ratio.
let drawPending = false;
function scheduleDraw(): void {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    drawAll();
  });
}
const resize = new RedrawOnResize(() => drawAll());

const host = {
  spec: () => editor.spec(),
  trainConfig: () => editor.trainConfig(),
  backend: () => backendSelect.value,
  data: () => data.current(),
  onLoaded: (spec: Parameters<SpecEditor['set']>[0], train: Parameters<SpecEditor['set']>[1]) => editor.set(spec, train),
  onChange: scheduleDraw,
  resize,
};
const runs = [new RunPanel('A', $('#run-panels'), host), new RunPanel('B', $('#run-panels'), host)];
const upcycleView = new UpcycleView(registry, { runs, data: () => data.current(), trainConfig: () => editor.trainConfig() });
const finetuneView = new FinetuneView(registry, { runs, data, backend: () => backendSelect.value, resize, onChange: scheduleDraw });
const compressView = new CompressView({ runs, data, backend: () => backendSelect.value, resize, onChange: scheduleDraw });
const compare = $<HTMLCanvasElement>('#compare');
resize.observe(compare);

function drawCompare(): void {
  const series: Series[] = [];
  for (const r of runs) {
    if (r.charts.losses.length) series.push({ name: `${r.name} train`, color: r.color, points: r.charts.losses });
    if (r.charts.evals.length) series.push({ name: `${r.name} val`, color: r.color, points: r.charts.evals, dashed: true });
  }
  lineChart(compare, series, { title: 'Runs A and B: train (solid) and validation (dashed) loss' });
}

function drawAll(): void {
  for (const r of runs) r.draw();
  drawCompare();
  finetuneView.draw();
  compressView.draw();
}

declare global {
  interface Window {
    playground: unknown;
  }
}
window.playground = {
  runs: Object.fromEntries(runs.map((r) => [r.name, () => r.snapshot()])),
  spec: () => editor.spec(),
  summary: () => ({ ...$('#summary').dataset }),
  upcycle: () => upcycleView.snapshot(),
  finetune: () => finetuneView.snapshot(),
  compress: () => compressView.snapshot(),
};

async function startUp(): Promise<void> {
  // The page only builds models to count their parameters: the plain JS backend is enough.
  await tf.setBackend('cpu');
  editor.start();
  drawAll();
  $('#app-status').textContent = `${registry.kinds().length} registry kinds · ${registry.presetNames().length} presets`;
  document.body.dataset.ready = 'true';
  data.preload();
}

void startUp().catch((e) => {
  $('#app-status').textContent = `start-up failed: ${(e as Error).message}`;
});
