/**
 * Backend resolution: `auto` picks the first available backend in priority order and says why; a name
 * picks that backend or fails with the reason it is unavailable. Environment-specific candidates
 * (tfjs-node-gpu, the native CPU kernels) are registered by the packages that know how to load them;
 * core knows only how to choose.
 */
import { closeMatches, MoelabError } from './errors.js';
import { patchWasmBackend } from './ops/engine-fixes.js';
import { tf } from './tf.js';

export interface BackendCandidate {
  name: string;
  /** Higher wins under `auto`. */
  priority: number;
  /** Try to make the backend available; resolve with ok=false and a reason when it cannot be. */
  load(): Promise<{ ok: boolean; reason: string }>;
  /** How a user gets it when it is missing. */
  hint?: string;
}

export interface BackendChoice {
  name: string;
  reason: string;
  tried: { name: string; ok: boolean; reason: string }[];
}

const candidates = new Map<string, BackendCandidate>();

export function registerBackendCandidate(c: BackendCandidate): void {
  candidates.set(c.name, c);
}

export function backendCandidates(): BackendCandidate[] {
  return [...candidates.values()].sort((a, b) => b.priority - a.priority);
}

// Always available: the plain JS backend that ships with tfjs.
registerBackendCandidate({ name: 'cpu', priority: 0, load: async () => ({ ok: true, reason: 'plain JavaScript kernels (always available, slowest)' }) });

function silenceCpuBanner(): void {
  // tfjs-backend-cpu prints a "use tfjs-node" banner on first use in Node; we print our own choice.
  const b = tf.backend() as unknown as { firstUse?: boolean };
  if (b && 'firstUse' in b) b.firstUse = false;
}

export async function resolveBackend(request = 'auto'): Promise<BackendChoice> {
  const tried: BackendChoice['tried'] = [];
  const list = request === 'auto' ? backendCandidates() : [candidates.get(request)];
  if (request !== 'auto' && !list[0]) {
    const known = [...candidates.keys(), ...Object.keys(tf.engine().registryFactory)];
    if (!known.includes(request)) {
      const close = closeMatches(request, [...new Set(known)]);
      throw new MoelabError(
        `unknown backend "${request}". ${close.length ? `Did you mean: ${close.join(', ')}? ` : ''}Known: ${[...new Set(known)].join(', ')}`,
      );
    }
    list[0] = { name: request, priority: 0, load: async () => ({ ok: true, reason: 'registered with tfjs' }) };
  }
  for (const c of list) {
    if (!c) continue;
    let res: { ok: boolean; reason: string };
    try {
      res = await c.load();
      if (res.ok && !(await tf.setBackend(c.name))) res = { ok: false, reason: 'tfjs could not initialise it' };
    } catch (e) {
      res = { ok: false, reason: (e as Error).message.split('\n')[0]! };
    }
    tried.push({ name: c.name, ok: res.ok, reason: res.reason });
    if (res.ok) {
      await tf.ready();
      silenceCpuBanner();
      if (c.name === 'wasm') patchWasmBackend();
      const skipped = tried.filter((t) => !t.ok).map((t) => `${t.name}: ${t.reason}`);
      const why = request === 'auto' ? `auto: best available${skipped.length ? ` (skipped ${skipped.join('; ')})` : ''} — ${res.reason}` : res.reason;
      return { name: c.name, reason: why, tried };
    }
    if (request !== 'auto') {
      throw new MoelabError(`backend "${c.name}" is not available: ${res.reason}${c.hint ? `. ${c.hint}` : ''}`);
    }
  }
  throw new MoelabError(`no backend could be initialised: ${tried.map((t) => `${t.name}: ${t.reason}`).join('; ')}`);
}
