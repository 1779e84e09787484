/**
 * Small canvas charts: line charts (several series) and an expert-load heatmap over time.
 *
 * Sharp on high-DPI screens: every draw sizes the canvas's backing store to its CSS box times
 * `devicePixelRatio` and draws in CSS pixels through a scaled transform, and {@link RedrawOnResize}
 * redraws when a canvas changes CSS size or the ratio changes (browser zoom, a move to another
 * screen). Each canvas needs an explicit CSS width and height (style.css), so that the backing size
 * never feeds back into the layout.
 *
 * Why hand-written rather than a charting library such as uPlot: the expert-load heatmap is not a
 * chart type uPlot has (it would be custom drawing inside uPlot anyway), the line charts need only
 * axes, a legend and dashed series, and keeping one ~200-line drawing module lets the tests read
 * pixels and counts from every chart the same way. The high-DPI fix is the sizing below.
 */

export interface Series {
  name: string;
  color: string;
  points: [number, number][];
  dashed?: boolean;
}

/** A canvas prepared for drawing in CSS pixels: its context and CSS size. */
export interface CanvasFrame {
  ctx: CanvasRenderingContext2D;
  /** CSS width and height (the drawing coordinates). */
  width: number;
  height: number;
}

/**
 * Size `canvas`'s backing store to its CSS box × devicePixelRatio, clear it, and scale its context
 * so that drawing uses CSS pixels. A canvas not laid out (display: none, detached) keeps its
 * current backing size at ratio 1.
 */
export function prepareCanvas(canvas: HTMLCanvasElement): CanvasFrame {
  const ctx = canvas.getContext('2d');
  if (!ctx) throw new Error('canvas 2d context unavailable');
  const cssW = canvas.clientWidth;
  const cssH = canvas.clientHeight;
  const laidOut = cssW > 0 && cssH > 0;
  const dpr = laidOut ? (globalThis.devicePixelRatio ?? 1) : 1;
  const width = laidOut ? cssW : canvas.width;
  const height = laidOut ? cssH : canvas.height;
  const backingW = Math.round(width * dpr);
  const backingH = Math.round(height * dpr);
  // Assigning width/height resets the bitmap and the context state, so only when they change.
  if (canvas.width !== backingW) canvas.width = backingW;
  if (canvas.height !== backingH) canvas.height = backingH;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.setTransform(backingW / width, 0, 0, backingH / height, 0, 0);
  ctx.font = '11px system-ui, sans-serif';
  return { ctx, width, height };
}

/**
 * Calls `redraw` (at most once per animation frame) when an observed canvas changes CSS size or the
 * device pixel ratio changes.
 */
export class RedrawOnResize {
  private readonly observer: ResizeObserver;
  private pending = false;

  constructor(private readonly redraw: () => void) {
    this.observer = new ResizeObserver(() => this.schedule());
    this.watchPixelRatio();
  }

  observe(canvas: HTMLCanvasElement): void {
    this.observer.observe(canvas);
  }

  private schedule(): void {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.redraw();
    });
  }

  // A media query matches the current ratio only; when it stops matching, redraw and watch the new one.
  private watchPixelRatio(): void {
    const query = matchMedia(`(resolution: ${globalThis.devicePixelRatio ?? 1}dppx)`);
    query.addEventListener(
      'change',
      () => {
        this.schedule();
        this.watchPixelRatio();
      },
      { once: true },
    );
  }
}

export function lineChart(canvas: HTMLCanvasElement, series: Series[], opts: { title: string; yLabel?: string } = { title: '' }): void {
  const { ctx, width: W, height: H } = prepareCanvas(canvas);
  const pad = { l: 44, r: 8, t: 18, b: 18 };
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, W, H);
  ctx.fillStyle = '#333';
  ctx.fillText(opts.title, pad.l, 12);
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  if (all.length === 0) {
    ctx.fillStyle = '#999';
    ctx.fillText('no data yet', W / 2 - 25, H / 2);
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const X = (x: number) => pad.l + ((x - x0) / (x1 - x0)) * (W - pad.l - pad.r);
  const Y = (y: number) => H - pad.b - ((y - y0) / (y1 - y0)) * (H - pad.t - pad.b);
  ctx.strokeStyle = '#ddd';
  ctx.fillStyle = '#666';
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(y));
    ctx.lineTo(W - pad.r, Y(y));
    ctx.stroke();
    ctx.fillText(y.toPrecision(3), 2, Y(y) + 4);
  }
  ctx.fillText(String(Math.round(x0)), pad.l, H - 4);
  ctx.fillText(String(Math.round(x1)), W - pad.r - 24, H - 4);
  let lx = W - pad.r - 4;
  for (const s of [...series].reverse()) {
    const w = ctx.measureText(s.name).width + 16;
    lx -= w;
    ctx.fillStyle = s.color;
    ctx.fillRect(lx, 5, 10, 3);
    ctx.fillStyle = '#333';
    ctx.fillText(s.name, lx + 12, 12);
  }
  for (const s of series) {
    const pts = s.points.filter(([, y]) => Number.isFinite(y));
    if (!pts.length) continue;
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.setLineDash(s.dashed ? [4, 3] : []);
    ctx.beginPath();
    pts.forEach(([x, y], i) => {
      if (i) ctx.lineTo(X(x), Y(y));
      else ctx.moveTo(X(x), Y(y));
    });
    ctx.stroke();
    if (pts.length < 30) for (const [x, y] of pts) ctx.fillRect(X(x) - 1.5, Y(y) - 1.5, 3, 3);
  }
  ctx.setLineDash([]);
  ctx.lineWidth = 1;
}

/** Colour of expert e of n (distinct hues), used by the heatmap legend and the token colouring. */
export function expertColor(e: number, n: number, alpha = 1): string {
  if (e < 0) return `rgba(200,200,200,${alpha})`;
  const hue = Math.round((360 * e) / Math.max(1, n)) % 360;
  return `hsla(${hue}, 70%, 55%, ${alpha})`;
}

/**
 * Expert load over time: one column per recorded step, one row per expert; the colour is the share of
 * the layer's assignments (white = 0, dark = twice the uniform share or more).
 */
export function heatmap(canvas: HTMLCanvasElement, rows: number[][], opts: { title: string; numExperts: number }): number {
  const { ctx, width: W, height: H } = prepareCanvas(canvas);
  const pad = { l: 28, r: 4, t: 16, b: 4 };
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, W, H);
  ctx.fillStyle = '#333';
  ctx.fillText(opts.title, pad.l, 11);
  const E = opts.numExperts;
  if (!rows.length || E === 0) return 0;
  const cols = Math.min(rows.length, W - pad.l - pad.r);
  const start = rows.length - cols;
  const cw = (W - pad.l - pad.r) / cols;
  const ch = (H - pad.t - pad.b) / E;
  const uniform = 1 / E;
  let painted = 0;
  for (let c = 0; c < cols; c++) {
    const load = rows[start + c]!;
    for (let e = 0; e < E; e++) {
      const v = Math.min(1, (load[e] ?? 0) / (2 * uniform));
      const shade = Math.round(255 * (1 - v));
      ctx.fillStyle = `rgb(${shade},${Math.round(shade * 0.9 + 20)},255)`;
      ctx.fillRect(pad.l + c * cw, pad.t + e * ch, Math.ceil(cw), Math.ceil(ch));
      painted++;
    }
  }
  for (let e = 0; e < E; e++) {
    ctx.fillStyle = expertColor(e, E);
    ctx.fillRect(2, pad.t + e * ch + 1, 8, Math.max(1, ch - 2));
    if (ch >= 10) {
      ctx.fillStyle = '#333';
      ctx.fillText(String(e), 12, pad.t + e * ch + ch / 2 + 4);
    }
  }
  return painted;
}

/** One group of bars (one MoE layer): a value per expert. */
export interface BarGroup {
  label: string;
  values: number[];
  /** Per bar: drawn hollow (e.g. a pruned expert). */
  hollow?: boolean[];
  /** Per bar: colour index (default: the expert's own colour); bars with the same index share a colour. */
  colorIndex?: number[];
}

/**
 * Bars per expert, grouped by layer side by side on one axis from 0. Returns the number of bars drawn
 * (the e2e test checks it).
 */
export function barChart(canvas: HTMLCanvasElement, groups: BarGroup[], opts: { title: string }): number {
  const { ctx, width: W, height: H } = prepareCanvas(canvas);
  const pad = { l: 44, r: 8, t: 18, b: 18 };
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, W, H);
  ctx.fillStyle = '#333';
  ctx.fillText(opts.title, pad.l, 12);
  const all = groups.flatMap((g) => g.values).filter(Number.isFinite);
  if (all.length === 0) {
    ctx.fillStyle = '#999';
    ctx.fillText('no data yet', W / 2 - 25, H / 2);
    return 0;
  }
  const y1 = Math.max(...all, 0) || 1;
  const y0 = Math.min(...all, 0);
  const Y = (y: number) => H - pad.b - ((y - y0) / (y1 - y0)) * (H - pad.t - pad.b);
  ctx.strokeStyle = '#ddd';
  ctx.fillStyle = '#666';
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(y));
    ctx.lineTo(W - pad.r, Y(y));
    ctx.stroke();
    ctx.fillText(y.toPrecision(3), 2, Y(y) + 4);
  }
  const gap = 1;
  const slots = groups.reduce((n, g) => n + g.values.length, 0) + gap * (groups.length - 1);
  const bw = (W - pad.l - pad.r) / slots;
  let x = pad.l;
  let drawn = 0;
  for (const g of groups) {
    const n = g.values.length;
    ctx.fillStyle = '#333';
    ctx.fillText(g.label, x, H - 4);
    g.values.forEach((v, e) => {
      if (!Number.isFinite(v)) return;
      const ci = g.colorIndex?.[e] ?? e;
      const top = Y(Math.max(v, 0));
      const h = Math.max(1, Math.abs(Y(v) - Y(0)));
      const left = x + e * bw + 1;
      const width = Math.max(1, bw - 2);
      if (g.hollow?.[e]) {
        ctx.strokeStyle = expertColor(ci, n);
        ctx.lineWidth = 1.5;
        ctx.setLineDash([3, 2]);
        ctx.strokeRect(left, top, width, h);
        ctx.setLineDash([]);
        ctx.lineWidth = 1;
      } else {
        ctx.fillStyle = expertColor(ci, n);
        ctx.fillRect(left, top, width, h);
      }
      drawn++;
    });
    x += (n + gap) * bw;
  }
  return drawn;
}
