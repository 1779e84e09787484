/**
 * The model builder: walks a JSON model spec, resolves every `{ "type": name, ... }` node from the
 * registry, validates it against the entry's schema (errors carry the JSON path), and calls factories.
 */
import { MoelabError } from './errors.js';
import { buildWithinLimit } from './memory.js';
import type { Kind, Registry } from './registry.js';
import { Rng } from './rng.js';
import { type NodeSpec, validateConfig } from './schema.js';

/**
 * Values a parent hands down to the nodes it builds (a MoE layer tells its router how many experts
 * there are; the model tells everyone dModel).
 */
export interface BuildEnv {
  dModel?: number;
  vocabSize?: number;
  contextLength?: number;
  numExperts?: number;
  /** Set by a causal language model: routers that look across tokens of a batch are refused there. */
  causal?: boolean;
  /** Modules shared between nodes of one build (see `BuildContext.shared`); set by the outermost `buildNode`. */
  sharedModules?: Map<string, unknown>;
  [key: string]: unknown;
}

export interface BuildContext {
  registry: Registry;
  /** JSON path of the node being built, e.g. `$.block.ffn.router`. */
  path: string;
  /** Initialisation randomness, derived from the seed and this node's path (order-independent). */
  rng: Rng;
  seed: number;
  env: BuildEnv;
  /** Build a child node. `key` is appended to the JSON path. */
  build<T = unknown>(kind: Kind, node: NodeSpec | undefined, key: string | number, env?: BuildEnv): T;
  /** Read a value the parent provided, or fail with a clear message naming this node. */
  need<K extends keyof BuildEnv>(key: K): NonNullable<BuildEnv[K]>;
  /**
   * One object per `key` for the whole build (the outermost `buildNode` call): the first node that asks
   * creates it with `create(rng)` (rng derived from the seed and the key, so it does not depend on which
   * node asked first); later nodes get the same object. Used for parameters shared across layers (e.g.
   * RMoE's recurrent router cell).
   */
  shared<T>(key: string, create: (rng: Rng) => T): T;
}

function childPath(path: string, key: string | number): string {
  return typeof key === 'number' ? `${path}[${key}]` : `${path}.${key}`;
}

/** Split a node into its type name and its options. */
export function nodeParts(node: NodeSpec | undefined, kind: Kind, path: string): { type: string; options: Record<string, unknown> } {
  if (typeof node === 'string') return { type: node, options: {} };
  if (!node || typeof node !== 'object' || Array.isArray(node)) {
    throw new MoelabError(`expected a ${kind} node: a type name or an object with a "type" field (got ${JSON.stringify(node)})`, path);
  }
  const { type, ...options } = node as { type?: unknown };
  if (typeof type !== 'string') throw new MoelabError(`a ${kind} node needs a "type" field naming a registered ${kind}`, `${path}.type`);
  return { type, options };
}

export function makeContext(registry: Registry, seed: number, path: string, env: BuildEnv): BuildContext {
  const ctx: BuildContext = {
    registry,
    path,
    seed,
    env,
    rng: Rng.derive(seed, 'init', path, env.layerIndex === undefined ? '' : String(env.layerIndex)),
    build<T>(kind: Kind, node: NodeSpec | undefined, key: string | number, childEnv?: BuildEnv): T {
      return buildNode<T>(registry, kind, node, childPath(path, key), seed, { ...env, ...(childEnv ?? {}) });
    },
    need(key) {
      const v = env[key];
      if (v === undefined || v === null) throw new MoelabError(`this node needs "${String(key)}" from its parent, which did not provide it`, path);
      return v as NonNullable<BuildEnv[typeof key]>;
    },
    shared<T>(key: string, create: (rng: Rng) => T): T {
      const store = env.sharedModules;
      if (!store) return create(Rng.derive(seed, 'init', 'shared', key));
      if (!store.has(key)) store.set(key, create(Rng.derive(seed, 'init', 'shared', key)));
      return store.get(key) as T;
    },
  };
  return ctx;
}

/** Resolve and build one node. */
export function buildNode<T = unknown>(registry: Registry, kind: Kind, node: NodeSpec | undefined, path: string, seed: number, env: BuildEnv = {}): T {
  const { type, options } = nodeParts(node, kind, path);
  const entry = registry.get(kind, type, `${path}${typeof node === 'string' ? '' : '.type'}`);
  const config = validateConfig(entry.schema, options, path, (kind) => registry.names(kind));
  const ctx = makeContext(registry, seed, path, env.sharedModules ? env : { ...env, sharedModules: new Map() });
  return entry.create(config, ctx) as T;
}

/** Validate a node and return its config with defaults filled in (does not build anything). */
export function resolveConfig(registry: Registry, kind: Kind, node: NodeSpec, path = '$'): { type: string; config: Record<string, unknown> } {
  const { type, options } = nodeParts(node, kind, path);
  const entry = registry.get(kind, type, `${path}.type`);
  return { type, config: validateConfig(entry.schema, options, path, (kind) => registry.names(kind)) as Record<string, unknown> };
}

/** What a `model` entry builds: a causal language model over token ids. */
export interface LanguageModel {
  readonly vocabSize: number;
  readonly contextLength: number;
  /** tokens [B, T] int32 -> logits [B, T, V] */
  forward(tokens: import('./tf.js').Tensor, ctx: import('./module.js').ForwardContext): import('./tf.js').Tensor3D;
  /** Optional KV-cached decoding (TransformerLM has it): why the model cannot use a cache, or null. */
  cacheBlocker?(): string | null;
  /** A fresh decoding cache (throws a MoelabError when cacheBlocker objects). */
  createCache?(): import('./nn/kv-cache.js').DecodingCache;
  /** tokens [B, m] at positions cache.length.. -> their logits [B, m, V], appending to the cache. */
  forwardCached?(
    tokens: import('./tf.js').Tensor,
    ctx: import('./module.js').ForwardContext,
    cache: import('./nn/kv-cache.js').DecodingCache,
  ): import('./tf.js').Tensor3D;
}

export interface BuildModelOptions {
  /**
   * Refuse the model, before allocating its weights, when it has more parameters than this. Default: the
   * `MOELAB_MAX_PARAMETERS` environment variable, else the available memory / 16 bytes (see memory.ts).
   */
  maxParameters?: number;
}

/**
 * Build a model from a JSON spec. The spec's root is a `model` node, e.g. `{ "type": "transformer-lm", ... }`.
 * A model with more parameters than `maxParameters` is refused with its parameter count before its
 * weights are allocated.
 */
export function buildModel<M = import('./module.js').Module & LanguageModel>(spec: NodeSpec, registry: Registry, seed = 0, options: BuildModelOptions = {}): M {
  return buildWithinLimit(() => buildNode<M>(registry, 'model', spec, '$', seed, {}), { limit: options.maxParameters, where: '$' });
}
