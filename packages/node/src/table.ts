/** Plain-text tables for terminal output and Markdown files. */
export function formatTable(headers: string[], rows: (string | number)[][], markdown = false): string {
  const cells = rows.map((r) => r.map((c) => String(c)));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]?.length ?? 0)));
  const line = (r: string[]) => (markdown ? `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |` : r.map((c, i) => c.padEnd(widths[i]!)).join('  '));
  const out = [line(headers)];
  out.push(markdown ? `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|` : widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of cells) out.push(line(r));
  return out.join('\n');
}

export function human(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}
