/**
 * Moving parameters between modules and safetensors: names map to variables, and every mismatch is
 * reported by tensor name (missing, unexpected, wrong shape) instead of failing somewhere deep inside.
 */
import { MoelabError, warn } from './errors.js';
import type { Module } from './module.js';
import type { SafeTensor, TensorToWrite } from './safetensors.js';
import { tf } from './tf.js';

export interface LoadReport {
  loaded: string[];
  missing: string[];
  unexpected: string[];
  mismatched: { name: string; expected: number[]; got: number[] }[];
  /** Loaded tensors holding NaN or ±Inf, with how many of each (each one is also reported through `warn`). */
  nonFinite: { name: string; nan: number; inf: number }[];
}

/** How many NaN and ±Inf values `data` holds. */
export function countNonFinite(data: ArrayLike<number>): { nan: number; inf: number } {
  let nan = 0;
  let inf = 0;
  for (let i = 0; i < data.length; i++) {
    const x = data[i]!;
    if (Number.isFinite(x)) continue;
    if (Number.isNaN(x)) nan++;
    else inf++;
  }
  return { nan, inf };
}

/** Snapshot of a module's parameters and buffers as plain arrays, ready for writeSafetensors. */
export function stateTensors(module: Module, prefix = ''): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  for (const [name, v] of module.stateDict()) out.set(prefix + name, { shape: v.shape.slice(), data: v.dataSync() as Float32Array });
  return out;
}

/**
 * Load tensors into a module by name. With `strict` (default) any missing, unexpected or mis-shaped
 * tensor is an error that lists them all; otherwise the report says what happened.
 */
export function loadState(
  module: Module,
  tensors: Map<string, SafeTensor | TensorToWrite>,
  opts: { strict?: boolean; prefix?: string; source?: string } = {},
): LoadReport {
  const strict = opts.strict ?? true;
  const prefix = opts.prefix ?? '';
  const own = new Map(module.stateDict());
  const report: LoadReport = { loaded: [], missing: [], unexpected: [], mismatched: [], nonFinite: [] };
  const pending: [string, tf.Variable, SafeTensor | TensorToWrite][] = [];
  for (const [name, v] of own) {
    const t = tensors.get(prefix + name);
    if (!t) {
      report.missing.push(name);
      continue;
    }
    if (t.shape.length !== v.shape.length || t.shape.some((d, i) => d !== v.shape[i])) {
      report.mismatched.push({ name, expected: v.shape.slice(), got: t.shape.slice() });
      continue;
    }
    pending.push([name, v, t]);
    report.loaded.push(name);
  }
  for (const name of tensors.keys()) {
    if (!name.startsWith(prefix)) continue;
    if (!own.has(name.slice(prefix.length))) report.unexpected.push(name);
  }
  if (strict && (report.missing.length || report.unexpected.length || report.mismatched.length)) {
    const parts: string[] = [];
    if (report.missing.length) parts.push(`missing: ${report.missing.join(', ')}`);
    if (report.unexpected.length) parts.push(`unexpected: ${report.unexpected.join(', ')}`);
    if (report.mismatched.length)
      parts.push(`wrong shape: ${report.mismatched.map((m) => `${m.name} (model ${JSON.stringify(m.expected)}, file ${JSON.stringify(m.got)})`).join(', ')}`);
    throw new MoelabError(`tensors do not match the model — ${parts.join('; ')}`, opts.source);
  }
  // The weights load as they are (a user may want to inspect them), but a NaN or Inf is named.
  for (const [name, , t] of pending) {
    if (!(t.data instanceof Float32Array)) continue;
    const { nan, inf } = countNonFinite(t.data);
    if (nan + inf === 0) continue;
    report.nonFinite.push({ name: prefix + name, nan, inf });
    const what = [nan ? `${nan} NaN` : '', inf ? `${inf} infinite` : ''].filter(Boolean).join(' and ');
    warn(`tensor "${prefix}${name}" holds ${what} value${nan + inf > 1 ? 's' : ''} (of ${t.data.length})`, opts.source);
  }
  // Only assign once everything checked out, so a failed load leaves the model untouched.
  for (const [, v, t] of pending) {
    const data = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data as ArrayLike<number>);
    tf.tidy(() => v.assign(tf.tensor(data, v.shape, v.dtype)));
  }
  return report;
}
