/**
 * Errors a user can act on. Every error moelab throws on bad input names what is wrong and where:
 * a JSON path into a model spec (`$.block.ffn.router.k`), a file, or a tensor name.
 */
export class MoelabError extends Error {
  /** Where the problem is: a JSON path, a file path, a tensor name. */
  readonly where?: string;
  constructor(message: string, where?: string) {
    super(where ? `${where}: ${message}` : message);
    this.name = 'MoelabError';
    this.where = where;
  }
}

/** The closest names to `name` (edit distance), for "did you mean" hints. */
export function closeMatches(name: string, candidates: readonly string[], max = 3): string[] {
  const scored = candidates.map((c) => ({ c, d: editDistance(name.toLowerCase(), c.toLowerCase()) }));
  const limit = Math.max(2, Math.ceil(name.length / 2));
  return scored
    .filter((s) => s.d <= limit || s.c.toLowerCase().includes(name.toLowerCase()) || name.toLowerCase().includes(s.c.toLowerCase()))
    .sort((a, b) => a.d - b.d || a.c.localeCompare(b.c))
    .slice(0, max)
    .map((s) => s.c);
}

export function editDistance(a: string, b: string): number {
  const prev = new Array<number>(b.length + 1);
  for (let j = 0; j <= b.length; j++) prev[j] = j;
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

/** Receives warnings: something is suspicious but the operation went on (e.g. a checkpoint holding NaN). */
export type WarningHandler = (message: string) => void;

const printWarning: WarningHandler = (message) => console.warn(`moelab: warning: ${message}`);
let warningHandler: WarningHandler = printWarning;

/** Route warnings elsewhere (a log, a UI, a test); `undefined` restores printing to the console. Returns the previous handler. */
export function setWarningHandler(handler: WarningHandler | undefined): WarningHandler {
  const previous = warningHandler;
  warningHandler = handler ?? printWarning;
  return previous;
}

/** Report a warning, formatted like a MoelabError: `where: message`. */
export function warn(message: string, where?: string): void {
  warningHandler(where ? `${where}: ${message}` : message);
}
