/**
 * Preconditions of merging several dense models (docs/upcycling.md#preconditions): one architecture
 * (the same resolved spec), one vocabulary, the same tensor names and shapes. Sources that share all
 * that but not a common seed can be averaged, but the average is meaningless: that only warns, when the
 * mean relative L2 distance of the averaged tensors to their mean exceeds a threshold.
 */
import { MoelabError, type Registry } from '@moelab/core';
import type { UpcycleSource } from './contract.js';
import { modelView } from './model-view.js';
import { relativeSpread, sameShape } from './weights.js';

/** The first path at which two JSON values differ, with both values, or null when equal. */
function firstDifference(a: unknown, b: unknown, path: string): { path: string; a: unknown; b: unknown } | null {
  if (a === b) return null;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) return { path, a, b };
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  for (const k of keys) {
    const d = firstDifference((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], Array.isArray(a) ? `${path}[${k}]` : `${path}.${k}`);
    if (d) return d;
  }
  return null;
}

/** The resolved architecture of a source: model, block, attention and FFN configs with defaults. */
function architecture(registry: Registry, s: UpcycleSource, where: string): unknown {
  const v = modelView(registry, s.spec, where);
  const { block: _b, blocks: _bs, ...model } = v.config;
  return {
    ...model,
    layers: v.layers.map((l) => ({ ...l.block, attention: { type: l.attentionType, ...l.attention }, ffn: { type: l.ffnType, ...l.ffn } })),
  };
}

/** A source's label for messages: `experts[1] (B)`. */
export function sourceLabel(role: string, s: UpcycleSource): string {
  return `${role} (${s.name})`;
}

/**
 * Every source has the reference's architecture, vocabulary and tensors (names and shapes); otherwise a
 * one-line MoelabError naming the source and the first difference.
 */
export function checkCompatible(registry: Registry, sources: { role: string; source: UpcycleSource }[]): void {
  const [ref, ...rest] = sources;
  if (!ref) return;
  const refWhere = sourceLabel(ref.role, ref.source);
  const refArch = architecture(registry, ref.source, refWhere) as Record<string, unknown>;
  for (const { role, source } of rest) {
    const where = sourceLabel(role, source);
    const arch = architecture(registry, source, where) as Record<string, unknown>;
    if (arch.vocabSize !== refArch.vocabSize)
      throw new MoelabError(
        `vocabulary of ${arch.vocabSize} tokens differs from ${refWhere}'s ${refArch.vocabSize}: sources must share one tokenizer`,
        `${where}: $.vocabSize`,
      );
    const d = firstDifference(refArch, arch, '$');
    if (d)
      throw new MoelabError(
        `architecture differs from ${refWhere}: ${d.path} is ${JSON.stringify(d.b)} here and ${JSON.stringify(d.a)} there (sources must share one architecture)`,
        where,
      );
    for (const [name, t] of ref.source.weights) {
      const u = source.weights.get(name);
      if (!u) throw new MoelabError(`tensor "${name}" of ${refWhere} is missing`, where);
      if (!sameShape(t.shape, u.shape))
        throw new MoelabError(`tensor "${name}" has shape ${JSON.stringify(u.shape)}, ${refWhere} has ${JSON.stringify(t.shape)}`, where);
    }
    for (const name of source.weights.keys())
      if (!ref.source.weights.has(name)) throw new MoelabError(`unexpected tensor "${name}" (${refWhere} has none of that name)`, where);
  }
}

/**
 * Mean relative spread (‖θ_i − θ̄‖ / ‖θ̄‖ averaged over sources and tensors) of tensors that are about to be
 * averaged. Models branched from one seed stay well below 0.5; independently initialised ones are near
 * √(N − 1) (their mean shrinks by √N while each stays at full norm).
 */
export function meanSpread(sources: UpcycleSource[], names: string[]): number {
  if (sources.length < 2 || names.length === 0) return 0;
  let s = 0;
  for (const n of names) s += relativeSpread(sources.map((src) => src.weights.get(n)!));
  return s / names.length;
}
