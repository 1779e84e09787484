/**
 * Target globs: which modules of a base model an adapter attaches to. A glob is matched against whole
 * module paths (`transformer.layers.0.attention.q_proj`): `*` is any run of characters (dots included),
 * `?` one character; matching is case-sensitive. Every glob must match at least one module of the kind
 * the attachment needs, or the error names the glob and suggests paths that would match.
 */
import { closeMatches, Linear, type Module, MoelabError, MoELayer, TransformerBlock } from '@moelab/core';
import type { AdapterSite, Attachment, SiteModules } from './adapter.js';

/** The anchored regular expression of a glob. */
export function globToRegExp(glob: string): RegExp {
  const body = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

/** What kind of module each attachment point needs, in words (for messages). */
const NEEDS: Record<Attachment, string> = {
  'block-parallel': 'the feed-forward block (`ffn`) of a transformer block',
  'in-expert': 'an MoE layer',
  'linear-wrap': 'a Linear module',
  'activation-scale': 'a Linear module',
  'expert-select': 'an MoE layer',
};

/** The modules of `model` an attachment point can attach to, by path. */
export function candidateModules<A extends Attachment>(model: Module, attachment: A): Map<string, SiteModules[A]> {
  const out = new Map<string, SiteModules[A]>();
  for (const m of model.modules()) {
    if (attachment === 'block-parallel') {
      if (m instanceof TransformerBlock) out.set(m.ffn.path, m.ffn as unknown as SiteModules[A]);
    } else if (attachment === 'in-expert' || attachment === 'expert-select') {
      if (m instanceof MoELayer) out.set(m.path, m as SiteModules[A]);
    } else if (m instanceof Linear) out.set(m.path, m as SiteModules[A]);
  }
  return out;
}

/** Layer indices replaced by `*`: `transformer.layers.0.ffn` -> `transformer.layers.*.ffn` (one entry per pattern). */
function generalised(paths: Iterable<string>): string[] {
  return [...new Set([...paths].map((p) => p.replace(/\.\d+(?=\.|$)/g, '.*')))];
}

/**
 * The sites the globs select for an attachment point, in model order. `where` names the option in
 * messages (e.g. `$.adapter.targets`).
 */
export function matchTargets<A extends Attachment>(model: Module, attachment: A, targets: string[], dModel: number, where: string): AdapterSite<A>[] {
  const candidates = candidateModules(model, attachment);
  const all = model.modules().filter((m) => m.path !== '');
  const chosen = new Set<string>();
  targets.forEach((glob, i) => {
    const re = globToRegExp(glob);
    const hits = [...candidates.keys()].filter((p) => re.test(p));
    if (hits.length > 0) {
      for (const h of hits) chosen.add(h);
      return;
    }
    const wrongKind = all.filter((m) => re.test(m.path));
    const patterns = generalised(candidates.keys());
    const close = closeMatches(glob, patterns);
    const hint = close.length ? ` Did you mean: ${close.join(', ')}?` : patterns.length ? ` It can attach to: ${patterns.slice(0, 6).join(', ')}.` : '';
    if (wrongKind.length > 0)
      throw new MoelabError(
        `target "${glob}" matches ${wrongKind[0]!.path} (${wrongKind[0]!.constructor.name})${wrongKind.length > 1 ? ` and ${wrongKind.length - 1} more` : ''}, but ${attachment} attaches to ${NEEDS[attachment]}.${hint}`,
        `${where}[${i}]`,
      );
    if (candidates.size === 0) throw new MoelabError(`this model has no ${NEEDS[attachment]}, so ${attachment} has nothing to attach to`, `${where}[${i}]`);
    throw new MoelabError(`target "${glob}" matches no module of the model.${hint}`, `${where}[${i}]`);
  });
  return [...candidates.entries()].filter(([p]) => chosen.has(p)).map(([path, module]) => ({ path, module, dModel }));
}
