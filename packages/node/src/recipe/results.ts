/**
 * The results table of a recipe: per run, held-out bits per byte of every domain and their mean, a
 * merge's mean at step 0, parameters, training FLOPs per token (3 × forward, attention included) and of
 * the whole pipeline up to the run, wall time and tokens/s; then the routing shares of every MoE run
 * (per domain, the fraction of its held-out tokens whose first-choice expert is each expert, mean over
 * layers).
 */
import { formatTable, human } from '../table.js';
import type { Recipe } from './schema.js';
import type { RecipeRow } from './unit.js';

function flops(x: number): string {
  if (x >= 1e15) return `${(x / 1e15).toFixed(2)}P`;
  if (x >= 1e12) return `${(x / 1e12).toFixed(2)}T`;
  if (x >= 1e9) return `${(x / 1e9).toFixed(2)}G`;
  if (x >= 1e6) return `${(x / 1e6).toFixed(3)}M`;
  return human(x);
}

function seconds(s: number): string {
  return s >= 100 ? `${s.toFixed(0)}s` : `${s.toFixed(1)}s`;
}

/** Routing-share lines of one run: `  kjv   seed 0.18  kjv 0.33  …`. */
function sharesBlock(r: RecipeRow, domains: readonly string[]): string | undefined {
  const shares = r.heldOut.routingShares;
  if (!shares) return undefined;
  const E = Math.max(...Object.values(shares).map((s) => s.length));
  // A model trained from scratch has the merge's architecture, expert names included, but no expert came from a domain.
  const named = r.kind !== 'scratch' && r.expertNames && r.expertNames.length === E;
  const names = named ? r.expertNames! : Array.from({ length: E }, (_, e) => `e${e}`);
  const rows = domains.filter((d) => shares[d]).map((d) => [d, ...shares[d]!.map((x) => x.toFixed(2))]);
  const own = domains
    .map((d) => {
      const e = names.findIndex((n) => n === d || n.endsWith(`.${d}`));
      return e >= 0 && shares[d] ? `${d} ${shares[d]![e]!.toFixed(2)}` : undefined;
    })
    .filter(Boolean);
  const table = formatTable(['tokens of', ...names], rows)
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');
  return `${r.id} (first-choice expert share per domain, mean over layers${own.length ? `; own-expert share: ${own.join(', ')}, uniform ${(1 / E).toFixed(2)}` : ''}):\n${table}`;
}

export function formatResults(_recipe: Recipe, domains: readonly string[], rows: readonly RecipeRow[]): { text: string; markdown: string } {
  const headers = ['run', 'steps', ...domains, 'mean', 'step 0', 'params', 'active', 'train FLOP/tok', 'pipeline FLOPs', 'wall', 'tok/s'];
  const body = rows.map((r) => [
    r.id,
    r.steps,
    ...domains.map((d) => r.heldOut.bitsPerByte[d]?.toFixed(3) ?? '-'),
    r.heldOut.mean.toFixed(3),
    r.step0 ? r.step0.mean.toFixed(3) : '-',
    human(r.parameters),
    human(r.activeParameters),
    flops(3 * r.forwardFlopsPerToken),
    flops(r.pipelineFlops),
    seconds(r.wallSec),
    Math.round(r.tokensPerSec),
  ]);
  const what = rows
    .map((r) => `  ${r.id}: ${r.what}${r.step0 ? `; step 0: ${domains.map((d) => r.step0!.bitsPerByte[d]?.toFixed(3)).join(' / ')}` : ''}`)
    .join('\n');
  const shares = rows
    .map((r) => sharesBlock(r, domains))
    .filter(Boolean)
    .join('\n\n');
  const legend = 'held-out bits per byte per domain; step 0 = a merge before training; train FLOP/tok = 3 x forward FLOPs per token';
  const text = `${formatTable(headers, body)}\n(${legend})\n\n${what}${shares ? `\n\n${shares}` : ''}`;
  const markdown = `${formatTable(headers, body, true)}\n\n${legend}.\n\n\`\`\`\n${what}${shares ? `\n\n${shares}` : ''}\n\`\`\`\n`;
  return { text, markdown };
}
