/** A progress line for long work: step, loss, tokens/s and ETA, redrawn in place on a terminal. */
export class Progress {
  private last = 0;
  private readonly start = Date.now();
  constructor(
    readonly total: number,
    readonly label: string,
    readonly stream: NodeJS.WriteStream = process.stderr,
    readonly quiet = false,
  ) {}

  update(done: number, fields: Record<string, string | number>): void {
    if (this.quiet) return;
    const now = Date.now();
    const tty = this.stream.isTTY;
    // On a terminal redraw at most 10x/s; in logs print a line every ~10% (and the last one).
    if (tty ? now - this.last < 100 && done < this.total : done % Math.max(1, Math.round(this.total / 10)) !== 0 && done !== this.total) return;
    this.last = now;
    const frac = Math.min(1, done / Math.max(1, this.total));
    const width = 24;
    const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
    const elapsed = (now - this.start) / 1000;
    const eta = frac > 0 ? elapsed / frac - elapsed : 0;
    const parts = Object.entries(fields).map(([k, v]) => `${k} ${typeof v === 'number' ? formatNum(v) : v}`);
    const line = `${this.label} [${bar}] ${done}/${this.total} ${parts.join(' | ')} | ${fmtTime(elapsed)} elapsed, ETA ${fmtTime(eta)}`;
    this.stream.write(tty ? `\r\x1b[K${line}` : `${line}\n`);
  }

  done(): void {
    if (!this.quiet && this.stream.isTTY) this.stream.write('\n');
  }
}

function formatNum(v: number): string {
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3);
}

export function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}
