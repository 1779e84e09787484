/**
 * Dense FFN tensors as expert tensors. A dense FFN stores `Linear.weight` as [out, in]:
 * w1.weight, w3.weight [h, d] and w2.weight [d, h]; the `mlp` expert bank stores [E, in, out]:
 * w1, w3 [E, d, h] and w2 [E, h, d]. One expert = the three matrices transposed.
 */
import type { NodeSpec, Registry } from '@moelab/core';
import { MoelabError } from '@moelab/core';
import type { ProvenanceEntry, UpcycleSource } from './contract.js';
import { type DenseFFNConfig, layerPrefix } from './model-view.js';
import { stackTensors, transpose2d, type WeightMap, type WeightTensor } from './weights.js';

export type GluPart = 'w1' | 'w3' | 'w2';

/** One FFN in expert layout ([in, out]): w1, w3 [d, h], w2 [h, d]; `from` names the source tensors. */
export interface ExpertTensors {
  parts: Partial<Record<GluPart, WeightTensor>>;
  from: Partial<Record<GluPart, string>>;
}

/** The parts of an FFN: w1, (w3), w2. */
export function ffnParts(glu: boolean): GluPart[] {
  return glu ? ['w1', 'w3', 'w2'] : ['w1', 'w2'];
}

/** Layer `l`'s dense FFN of `src`, transposed to expert layout. */
export function denseAsExpert(src: UpcycleSource, l: number, glu: boolean): ExpertTensors {
  const out: ExpertTensors = { parts: {}, from: {} };
  for (const part of ffnParts(glu)) {
    const name = `${layerPrefix(l)}.ffn.${part}.weight`;
    const t = src.weights.get(name);
    if (!t) throw new MoelabError(`tensor "${name}" is missing`, src.name);
    out.parts[part] = transpose2d(t, name);
    out.from[part] = `${src.name}:${name}`;
  }
  return out;
}

/** Write E experts into `prefix.w1|w3|w2` as stacked [E, ...] tensors, with provenance. */
export function writeExperts(
  weights: WeightMap,
  provenance: Map<string, ProvenanceEntry>,
  prefix: string,
  experts: ExpertTensors[],
  glu: boolean,
  note: string,
): void {
  for (const part of ffnParts(glu)) {
    const name = `${prefix}.${part}`;
    weights.set(
      name,
      stackTensors(
        experts.map((e) => e.parts[part]!),
        name,
      ),
    );
    provenance.set(name, { op: 'stack', from: experts.map((e) => e.from[part]!), note });
  }
}

/** The `mlp` expert node of a dense FFN's shape. */
export function mlpExpertNode(ffn: DenseFFNConfig, hidden = ffn.hidden): Exclude<NodeSpec, string> {
  return { type: 'mlp', hidden, activation: ffn.activation, glu: ffn.glu };
}

/**
 * A router node with `initStd` filled in when the router's schema has that option and the user left it
 * out (so the builder draws the router from N(0, std²), the upcycling papers' init).
 */
export function routerWithInit(registry: Registry, router: NodeSpec, std: number): NodeSpec {
  const node = typeof router === 'string' ? { type: router } : structuredClone(router);
  const entry = registry.get('router', node.type, 'router.type');
  const props = (entry.schema as { properties?: Record<string, unknown> }).properties ?? {};
  if ('initStd' in props && node.initStd === undefined) (node as Record<string, unknown>).initStd = std;
  return node;
}

/** Provenance of a new router's main weight: `new`, drawn by the builder with the router's init. */
export function markRouterNew(provenance: Map<string, ProvenanceEntry>, prefix: string, router: NodeSpec): void {
  const node = typeof router === 'string' ? { type: router } : router;
  const init = node.initStd !== undefined ? `N(0, ${node.initStd}²)` : 'its default init';
  provenance.set(`${prefix}.ffn.router.weight`, { op: 'new', from: [], note: `${node.type} router, ${init}` });
}
