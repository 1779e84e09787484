/**
 * `moelab sweep --router a,b,c`: train the same model with each router on the same data and token
 * budget, and compare validation perplexity, load balance (MaxVio, CV), drop rate and speed.
 */
import { join } from 'node:path';
import { MoelabError, type NodeSpec, type Registry, type TrainConfig, tf } from '@moelab/core';
import { CorpusTokens, loadCorpus } from './corpus.js';
import { writeFileAtomic } from './fsutil.js';
import { createDefaultRegistry } from './registry.js';
import { trainRun } from './run.js';
import { formatTable } from './table.js';

/** A copy of `spec` whose every MoE feed-forward node uses `router` (a name or a full node). */
export function withRouter(spec: NodeSpec, router: NodeSpec): NodeSpec {
  let found = 0;
  const walk = (n: unknown): unknown => {
    if (Array.isArray(n)) return n.map(walk);
    if (!n || typeof n !== 'object') return n;
    const o = Object.fromEntries(Object.entries(n).map(([k, v]) => [k, walk(v)]));
    if (o.type === 'moe') {
      o.router = structuredClone(router);
      found++;
    }
    return o;
  };
  const out = walk(spec) as NodeSpec;
  if (found === 0) throw new MoelabError('the model has no MoE layer (no node of type "moe") whose router could be swept');
  return out;
}

/** The router node of the first MoE layer of `spec` (undefined if none). */
export function firstRouter(spec: NodeSpec): NodeSpec | undefined {
  let found: NodeSpec | undefined;
  const walk = (n: unknown): void => {
    if (found || !n || typeof n !== 'object') return;
    if (Array.isArray(n)) {
      for (const m of n) walk(m);
      return;
    }
    const o = n as Record<string, unknown>;
    if (o.type === 'moe' && o.router && typeof o.router === 'object') found = o.router as NodeSpec;
    else for (const v of Object.values(o)) walk(v);
  };
  walk(spec);
  return found;
}

/**
 * The node for router `name` in a sweep: the fields of the preset's own router (e.g. `k`) that `name`'s
 * schema also has are carried over, so every router runs with the same experts per token where it has
 * such a setting (DeepSeek-V3's default k = 8 would otherwise activate every expert of an 8-expert layer).
 */
export function sweepRouterNode(registry: Registry, name: string, base: NodeSpec | undefined): NodeSpec {
  const props = (registry.describe('router', name).jsonSchema as { properties?: Record<string, unknown> }).properties ?? {};
  const node: Record<string, unknown> = { type: name };
  for (const [k, v] of Object.entries(base ?? {})) if (k !== 'type' && k in props) node[k] = v;
  return node as NodeSpec;
}

export interface SweepRow {
  router: string;
  valLoss: number;
  valPerplexity: number;
  maxVio: number;
  cv: number;
  dropRate: number;
  tokensPerSec: number;
  steps: number;
}

export function sweepRouters(o: {
  routers: string[];
  preset: string;
  data: string;
  outDir: string;
  train?: Partial<TrainConfig>;
  capacityFactor?: number;
  quiet?: boolean;
}): SweepRow[] {
  const registry = createDefaultRegistry();
  for (const r of o.routers) registry.get('router', r, '--router');
  const preset = registry.preset(o.preset, '--preset');
  const tokens = new CorpusTokens(loadCorpus(o.data));
  const rows: SweepRow[] = [];
  const base = firstRouter(preset.spec);
  for (const r of o.routers) {
    const spec = withRouter(preset.spec, sweepRouterNode(registry, r, base));
    const res = trainRun({
      registry,
      spec,
      train: { ...preset.train, ...(o.train ?? {}) },
      data: o.data,
      outDir: join(o.outDir, r),
      label: r,
      quiet: o.quiet,
      tokens,
    });
    const b = res.balance;
    rows.push({
      router: r,
      valLoss: res.finalEval.loss,
      valPerplexity: res.finalEval.perplexity,
      maxVio: b.length ? Math.max(...b.map((x) => x.maxVio)) : 0,
      cv: b.length ? b.reduce((s, x) => s + x.cv, 0) / b.length : 0,
      dropRate: b.length ? b.reduce((s, x) => s + x.dropRate, 0) / b.length : 0,
      tokensPerSec: res.tokensPerSec,
      steps: res.steps,
    });
    res.model.dispose();
    res.trainer.optimizer.dispose();
  }
  const headers = ['router', 'steps', 'val loss', 'val ppl', 'MaxVio', 'load CV', 'drop rate', 'tok/s'];
  const body = rows.map((r) => [
    r.router,
    r.steps,
    r.valLoss.toFixed(4),
    r.valPerplexity.toFixed(3),
    r.maxVio.toFixed(3),
    r.cv.toFixed(3),
    `${(100 * r.dropRate).toFixed(1)}%`,
    Math.round(r.tokensPerSec),
  ]);
  process.stdout.write(`\n${formatTable(headers, body)}\n\n(preset ${o.preset}, data ${o.data}, backend ${tf.getBackend()})\n`);
  writeFileAtomic(
    join(o.outDir, 'results.md'),
    `# moelab sweep (preset ${o.preset}, data ${o.data}, backend ${tf.getBackend()})\n\n${formatTable(headers, body, true)}\n`,
  );
  writeFileAtomic(join(o.outDir, 'results.json'), `${JSON.stringify({ preset: o.preset, data: o.data, backend: tf.getBackend(), rows }, null, 2)}\n`);
  return rows;
}
