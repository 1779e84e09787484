/**
 * The provenance table: for every tensor of an upcycled model, which source tensors it was made from and
 * by which operation ("where did this weight come from"). `provenanceRows` gives it as data (the
 * playground's view, JSON for a checkpoint directory); `formatProvenance` prints it, one row per tensor
 * or, with `group`, one row per operation and source pattern with the layer indices folded into `*`.
 */
import type { ProvenanceEntry, UpcycleResult } from './contract.js';

export interface ProvenanceRow {
  tensor: string;
  shape: number[];
  op: ProvenanceEntry['op'];
  from: string[];
  note: string;
}

/** One row per tensor of the upcycled model, in state-dict order. */
export function provenanceRows(result: Pick<UpcycleResult, 'weights' | 'provenance'>): ProvenanceRow[] {
  const rows: ProvenanceRow[] = [];
  for (const [tensor, t] of result.weights) {
    const p = result.provenance.get(tensor) ?? { op: 'new' as const, from: [] };
    rows.push({ tensor, shape: t.shape.slice(), op: p.op, from: p.from.slice(), note: p.note ?? '' });
  }
  return rows;
}

/** `transformer.layers.3.ffn.w1` -> `transformer.layers.*.ffn.w1` (and the same in source names). */
function foldLayers(s: string): string {
  return s.replace(/layers\.\d+\./g, 'layers.*.');
}

/** Rows with layer indices folded into `*` and identical rows merged (count = how many tensors). */
export function groupedProvenance(rows: ProvenanceRow[]): (ProvenanceRow & { count: number })[] {
  const out = new Map<string, ProvenanceRow & { count: number }>();
  for (const r of rows) {
    const tensor = foldLayers(r.tensor);
    const from = r.from.map(foldLayers);
    const key = JSON.stringify([tensor, r.op, from, r.note, r.shape]);
    const g = out.get(key);
    if (g) g.count++;
    else out.set(key, { ...r, tensor, from, count: 1 });
  }
  return [...out.values()];
}

/** Fixed-width columns (or a markdown table). */
function table(headers: string[], rows: string[][], markdown: boolean): string {
  const w = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    markdown
      ? `| ${cells.map((c, i) => c.padEnd(w[i]!)).join(' | ')} |`
      : cells
          .map((c, i) => c.padEnd(w[i]!))
          .join('  ')
          .trimEnd();
  const sep = markdown ? `| ${w.map((n) => '-'.repeat(n)).join(' | ')} |` : w.map((n) => '-'.repeat(n)).join('  ');
  return [line(headers), sep, ...rows.map(line)].join('\n');
}

/** Abbreviate a long list of sources: the first three and a count. */
function sources(from: string[]): string {
  if (from.length === 0) return '-';
  if (from.every((f) => f === from[0])) return from.length === 1 ? from[0]! : `${from[0]} (×${from.length})`;
  return from.length <= 3 ? from.join(', ') : `${from.slice(0, 3).join(', ')} (+${from.length - 3} more)`;
}

/**
 * The provenance table as text: columns tensor, shape, op, from, note. `group` (default true) folds
 * layers into `*` so a 24-layer model prints a screenful; `markdown` prints a markdown table.
 */
export function formatProvenance(result: Pick<UpcycleResult, 'weights' | 'provenance'>, opts: { group?: boolean; markdown?: boolean } = {}): string {
  const rows = provenanceRows(result);
  const group = opts.group ?? true;
  const body = group
    ? groupedProvenance(rows).map((r) => [r.count > 1 ? `${r.tensor} (×${r.count})` : r.tensor, JSON.stringify(r.shape), r.op, sources(r.from), r.note])
    : rows.map((r) => [r.tensor, JSON.stringify(r.shape), r.op, sources(r.from), r.note]);
  return table(['tensor', 'shape', 'op', 'from', 'note'], body, opts.markdown ?? false);
}

/** The report as a few lines: method, parameters and FLOPs next to the source's, notes and warnings. */
export function formatReport(result: Pick<UpcycleResult, 'report' | 'step'>): string {
  const r = result.report;
  const fmt = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(3)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n));
  const lines = [`upcycler: ${r.method} (${r.ms} ms)`];
  const src = r.source;
  lines.push(
    `parameters: ${fmt(r.totalParams)} total, ${fmt(r.activeParams)} active per token` +
      (src ? ` (${src.name}: ${fmt(src.totalParams)} total, ${fmt(src.activeParams)} active)` : ''),
  );
  lines.push(`forward FLOPs per token: ${fmt(r.forwardFlopsPerToken)}` + (src ? ` (${src.name}: ${fmt(src.forwardFlopsPerToken)})` : ''));
  if (result.step > 0) lines.push(`optimizer state carried over at step ${result.step}`);
  for (const n of r.notes) lines.push(`note: ${n}`);
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  return lines.join('\n');
}
