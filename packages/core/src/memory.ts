/**
 * Refusing a model too large for memory before its weights exist.
 *
 *   parameters(spec) · 4 bytes  ≤  limit · 4 bytes,   limit = available memory / (4 bytes · 4 copies)
 *
 * (training holds four float32 copies of every parameter: the weights, their gradients and AdamW's two
 * moments). The count is exact: `buildModel` builds under a parameter budget; every parameter and buffer
 * reserves its size before it is allocated (`Module.param`), and the random initialisers (`Rng`) ask
 * before they allocate. Once the budget is exceeded, the build continues as a plan: nothing more is
 * allocated, parameters become empty placeholders, and only their sizes are added up; then everything
 * created is disposed and the model is refused with its parameter count, its size in bytes and the limit.
 */
import { MoelabError } from './errors.js';

/** Bytes of one float32 parameter. */
export const BYTES_PER_PARAMETER = 4;
/** Float32 copies of each parameter a training run holds: weights, gradients, AdamW's m and v. */
export const TRAINING_COPIES = 4;
/** Environment variable (Node) that overrides the default limit: a parameter count. */
export const MAX_PARAMETERS_ENV = 'MOELAB_MAX_PARAMETERS';
/** Memory assumed where the runtime does not say how much is available (browsers without the hint). */
const FALLBACK_MEMORY_BYTES = 4 * 2 ** 30;

interface Budget {
  limit: number;
  /** Parameters reserved so far (all of them, also those only planned). */
  count: number;
  /** True once the limit was exceeded: nothing more is allocated. */
  planning: boolean;
  /** Every variable created under this budget, to dispose on refusal. */
  created: { dispose(): void }[];
}

let active: Budget | null = null;

type RuntimeGlobals = {
  process?: { env?: Record<string, string | undefined>; availableMemory?: () => number };
  navigator?: { deviceMemory?: number };
};

/** Memory this runtime says is available, in bytes, and where the number came from. */
export function availableMemory(): { bytes: number; source: string } {
  const g = globalThis as RuntimeGlobals;
  const node = g.process?.availableMemory?.();
  if (typeof node === 'number' && node > 0) return { bytes: node, source: 'available memory' };
  const device = g.navigator?.deviceMemory;
  if (typeof device === 'number' && device > 0) return { bytes: device * 2 ** 30, source: "the browser's device memory" };
  return { bytes: FALLBACK_MEMORY_BYTES, source: 'an assumed 4 GiB of memory' };
}

/** The default parameter limit and how it was set: `MOELAB_MAX_PARAMETERS`, else available memory / 16 bytes. */
export function defaultParameterLimit(): { limit: number; source: string } {
  const g = globalThis as RuntimeGlobals;
  const env = g.process?.env?.[MAX_PARAMETERS_ENV];
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isFinite(n) || n <= 0) throw new MoelabError(`must be a positive number of parameters (got ${JSON.stringify(env)})`, MAX_PARAMETERS_ENV);
    return { limit: Math.floor(n), source: MAX_PARAMETERS_ENV };
  }
  const mem = availableMemory();
  return {
    limit: Math.floor(mem.bytes / (BYTES_PER_PARAMETER * TRAINING_COPIES)),
    source: `${mem.source} (${formatBytes(mem.bytes)}) / ${BYTES_PER_PARAMETER * TRAINING_COPIES} bytes per parameter (weights, gradients, two AdamW moments)`,
  };
}

/** 1536 -> "1.50 KiB". */
export function formatBytes(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} bytes` : `${v.toFixed(2)} ${units[u]}`;
}

/**
 * May an array of `n` elements be allocated now? False once the build under a budget has become a plan
 * (or would become one with this array): the caller returns an empty array instead.
 */
export function mayAllocate(n: number): boolean {
  if (!active) return true;
  if (!active.planning && active.count + n > active.limit) active.planning = true;
  return !active.planning;
}

/** Reserve `n` parameters of the build under a budget. False: do not allocate them (the build is a plan). */
export function reserveParameters(n: number): boolean {
  if (!active) return true;
  active.count += n;
  if (!active.planning && active.count > active.limit) active.planning = true;
  return !active.planning;
}

/** Record a variable created under the budget, so a refused build can dispose it. */
export function trackAllocation(v: { dispose(): void }): void {
  active?.created.push(v);
}

/**
 * Run `build` under a parameter budget of `limit` (default: `defaultParameterLimit()`). Returns what it
 * built, or disposes everything it created and throws a MoelabError at `where` with the parameter count.
 */
export function buildWithinLimit<T>(build: () => T, opts: { limit?: number; where?: string } = {}): T {
  if (active) return build(); // an inner build shares the outer budget
  const { limit, source } = opts.limit !== undefined ? { limit: opts.limit, source: 'the maxParameters option' } : defaultParameterLimit();
  const budget: Budget = { limit, count: 0, planning: false, created: [] };
  active = budget;
  let result: T | undefined;
  let failure: unknown;
  try {
    result = build();
  } catch (e) {
    failure = e;
  } finally {
    active = null;
  }
  if (!budget.planning) {
    if (failure !== undefined) throw typedArrayError(failure, opts.where);
    return result as T;
  }
  for (const v of budget.created) v.dispose();
  // A plan that could not be finished (a constructor computed with a placeholder) still counted up to there.
  const count = `${failure === undefined ? '' : 'at least '}${budget.count.toLocaleString('en-US')} parameters (${formatBytes(budget.count * BYTES_PER_PARAMETER)} as float32)`;
  throw new MoelabError(
    `the model has ${count}, more than the limit of ${limit.toLocaleString('en-US')} parameters (${formatBytes(limit * BYTES_PER_PARAMETER)}) set by ${source}; make the model smaller, or raise the limit with ${MAX_PARAMETERS_ENV} or buildModel's maxParameters option`,
    opts.where,
  );
}

/** An allocation the JavaScript engine refused (a single tensor beyond its typed-array limit), as a MoelabError. */
function typedArrayError(e: unknown, where?: string): unknown {
  if (e instanceof RangeError && /typed array length|array buffer length|allocation failed/i.test(e.message))
    return new MoelabError(`a weight tensor is too large to allocate in this JavaScript engine (${e.message}); make the model smaller`, where);
  return e;
}
