/**
 * A run's recorded history and its charts: train and validation loss, tokens/s, and per MoE layer
 * an expert-load heatmap over steps and the routing entropy.
 */
import { heatmap, lineChart, type RedrawOnResize } from './charts.js';
import { $, el } from './dom.js';
import type { LayerRouting } from './protocol.js';

interface LayerHistory {
  numExperts: number;
  loads: number[][];
  entropy: [number, number][];
}

export class RunCharts {
  losses: [number, number][] = [];
  evals: [number, number][] = [];
  speed: [number, number][] = [];
  readonly layers = new Map<string, LayerHistory>();
  /** Heatmap cells painted by the last draw (the e2e test checks it). */
  heatPainted = 0;

  /** `root` holds canvas.loss, canvas.speed and the .layers box; `resize` redraws them when they change size. */
  constructor(
    private readonly root: HTMLElement,
    private readonly runName: string,
    private readonly color: string,
    private readonly resize: RedrawOnResize,
  ) {
    for (const c of root.querySelectorAll('canvas')) resize.observe(c);
  }

  reset(): void {
    this.losses = [];
    this.evals = [];
    this.speed = [];
    this.layers.clear();
    $('.layers', this.root).replaceChildren();
  }

  addStep(step: number, loss: number, tokensPerSec: number): void {
    this.losses.push([step, loss]);
    this.speed.push([step, tokensPerSec]);
  }

  /** Record an evaluation (a repeated step replaces the earlier value). */
  addEval(step: number, loss: number): void {
    this.evals = this.evals.filter(([s]) => s !== step);
    this.evals.push([step, loss]);
  }

  /** Record a step's routing; returns the layers seen for the first time. */
  addRouting(step: number, routing: LayerRouting[]): string[] {
    const added: string[] = [];
    for (const r of routing) {
      let h = this.layers.get(r.layer);
      if (!h) {
        h = { numExperts: r.numExperts, loads: [], entropy: [] };
        this.layers.set(r.layer, h);
        this.addLayerBox(r.layer, r.numExperts);
        added.push(r.layer);
      }
      h.loads.push(r.load);
      if (r.entropy !== undefined) h.entropy.push([step, r.entropy]);
    }
    return added;
  }

  private addLayerBox(layer: string, numExperts: number): void {
    const box = el('div', { class: 'layer', 'data-layer': layer });
    box.append(el('div', { class: 'meta' }, `MoE layer ${layer} · ${numExperts} experts`));
    const heat = el('canvas', { class: 'heat' });
    // Taller for more experts (8 CSS px a row), within 40..160.
    heat.style.height = `${Math.max(40, Math.min(160, 16 + numExperts * 8))}px`;
    const entropy = el('canvas', { class: 'entropy' });
    box.append(heat, entropy);
    $('.layers', this.root).append(box);
    this.resize.observe(heat);
    this.resize.observe(entropy);
  }

  draw(): void {
    lineChart(
      $<HTMLCanvasElement>('canvas.loss', this.root),
      [
        { name: 'train', color: this.color, points: this.losses },
        { name: 'validation', color: '#16a34a', points: this.evals, dashed: true },
      ],
      { title: `Run ${this.runName}: loss (nats/token)` },
    );
    lineChart($<HTMLCanvasElement>('canvas.speed', this.root), [{ name: 'tokens/s', color: '#7c3aed', points: this.speed }], { title: 'tokens / s' });
    let painted = 0;
    for (const box of $('.layers', this.root).querySelectorAll<HTMLElement>('.layer')) {
      const h = this.layers.get(box.dataset.layer ?? '');
      if (!h) continue;
      painted += heatmap($<HTMLCanvasElement>('canvas.heat', box), h.loads, { title: 'expert load over steps', numExperts: h.numExperts });
      lineChart($<HTMLCanvasElement>('canvas.entropy', box), [{ name: 'entropy', color: '#0891b2', points: h.entropy }], {
        title: `routing entropy (nats; uniform = ${Math.log(h.numExperts).toFixed(2)})`,
      });
    }
    this.heatPainted = painted;
  }
}
