/**
 * Reading and rewriting the model specs of upcycling sources: the resolved (defaults filled in) config
 * of the model, of every distinct layer's block and of its attention and feed-forward nodes, and the
 * tensor names moelab gives them. Only `transformer-lm` models are upcycled.
 */
import { MoelabError, type NodeSpec, type Registry, resolveConfig } from '@moelab/core';

export interface LayerView {
  /** Distinct layer index (0 .. stack.groupSize-1). */
  index: number;
  /** The block node as written in the spec. */
  blockNode: Exclude<NodeSpec, string>;
  block: Record<string, unknown>;
  ffnType: string;
  ffn: Record<string, unknown>;
  attentionType: string;
  attention: Record<string, unknown>;
}

export interface ModelView {
  spec: Exclude<NodeSpec, string>;
  config: Record<string, unknown>;
  layers: LayerView[];
  dModel: number;
  vocabSize: number;
}

function asObject(node: NodeSpec): Exclude<NodeSpec, string> {
  return typeof node === 'string' ? { type: node } : node;
}

/** The resolved view of a source's spec; `where` (e.g. `experts[1] (B)`) prefixes every error. */
export function modelView(registry: Registry, spec: NodeSpec, where: string): ModelView {
  const root = asObject(spec);
  if (root.type !== 'transformer-lm') throw new MoelabError(`upcycling needs a transformer-lm model (got "${root.type}")`, `${where}: $.type`);
  const { config } = resolveConfig(registry, 'model', root, `${where}: $`);
  const stack = config.stack as { groupSize: number };
  const blocks = config.blocks as NodeSpec[] | undefined;
  const layers: LayerView[] = [];
  for (let i = 0; i < stack.groupSize; i++) {
    const blockNode = asObject(blocks ? blocks[i]! : (config.block as NodeSpec));
    const bpath = `${where}: $.${blocks ? `blocks[${i}]` : 'block'}`;
    const block = resolveConfig(registry, 'block', blockNode, bpath).config;
    const ffn = resolveConfig(registry, 'ffn', block.ffn as NodeSpec, `${bpath}.ffn`);
    const attention = resolveConfig(registry, 'attention', block.attention as NodeSpec, `${bpath}.attention`);
    layers.push({ index: i, blockNode, block, ffnType: ffn.type, ffn: ffn.config, attentionType: attention.type, attention: attention.config });
  }
  return { spec: root, config, layers, dModel: config.dModel as number, vocabSize: config.vocabSize as number };
}

/** `transformer.layers.{i}`: the state-dict prefix of distinct layer i. */
export function layerPrefix(i: number): string {
  return `transformer.layers.${i}`;
}

/** What a dense FFN node resolves to (the `dense` ffn entry of core). */
export interface DenseFFNConfig {
  hidden: number;
  activation: string;
  glu: boolean;
  bias: boolean;
}

/** The dense FFN of a layer, or an error naming the layer when it is not a bias-free dense FFN. */
export function denseFFN(layer: LayerView, where: string, bias: 'refuse' | 'allow' = 'refuse'): DenseFFNConfig {
  if (layer.ffnType !== 'dense')
    throw new MoelabError(`layer ${layer.index}'s FFN is "${layer.ffnType}"; upcycling turns dense FFNs into experts`, `${where}: layer ${layer.index} ffn`);
  const c = layer.ffn as unknown as DenseFFNConfig;
  if (c.bias && bias === 'refuse')
    throw new MoelabError(
      `layer ${layer.index}'s dense FFN has biases, which moelab's expert banks do not hold; upcycle a bias-free FFN (bias: false)`,
      `${where}: layer ${layer.index} ffn.bias`,
    );
  return c;
}

/** The spec with per-layer blocks: a single `block` when every layer's block is the same, else `blocks`. */
export function specWithBlocks(spec: Exclude<NodeSpec, string>, blocks: Exclude<NodeSpec, string>[]): Exclude<NodeSpec, string> {
  const out = structuredClone(spec) as Record<string, unknown>;
  const first = JSON.stringify(blocks[0]);
  if (blocks.every((b) => JSON.stringify(b) === first)) {
    out.block = structuredClone(blocks[0]);
    delete out.blocks;
  } else {
    out.blocks = structuredClone(blocks);
    delete out.block;
  }
  return out as Exclude<NodeSpec, string>;
}

/** A block node with its ffn and/or attention replaced. */
export function replaceInBlock(layer: LayerView, parts: { ffn?: NodeSpec; attention?: NodeSpec }): Exclude<NodeSpec, string> {
  const b = structuredClone(layer.blockNode) as Record<string, unknown>;
  if (parts.ffn) b.ffn = parts.ffn;
  if (parts.attention) b.attention = parts.attention;
  return b as Exclude<NodeSpec, string>;
}

/** Which distinct layers to convert: "all", "every-other" (0-based odd layers: l mod 2 = 1), or a list. */
export function selectLayers(which: 'all' | 'every-other' | number[], count: number, where: string): number[] {
  if (which === 'all') return Array.from({ length: count }, (_, i) => i);
  if (which === 'every-other') {
    const out = Array.from({ length: count }, (_, i) => i).filter((i) => i % 2 === 1);
    if (out.length === 0)
      throw new MoelabError(`"every-other" converts the odd layers, but this model has ${count} layer; use layers: "all" or a list`, `${where}.layers`);
    return out;
  }
  const seen = new Set<number>();
  for (const l of which) {
    if (!Number.isInteger(l) || l < 0 || l >= count) throw new MoelabError(`layer ${l} is out of range [0, ${count})`, `${where}.layers`);
    if (seen.has(l)) throw new MoelabError(`layer ${l} is listed twice`, `${where}.layers`);
    seen.add(l);
  }
  if (seen.size === 0) throw new MoelabError('the list of layers to convert is empty', `${where}.layers`);
  return [...seen].sort((a, b) => a - b);
}
