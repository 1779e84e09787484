/**
 * The fixtures' tolerance rule. A computed tensor `got` matches the reference `exp` when, elementwise,
 *
 *   |got - exp| <= rtol · |exp| + atol · max|exp|
 *
 * (the atol term is scaled by the tensor's largest magnitude, so a tensor of tiny values is not passed by
 * a fixed absolute budget). Integer tensors (selected experts, retrieved indices) must match exactly; a
 * non-finite value fails.
 */
import type { SafeTensor } from '@moelab/core';
import type { Tolerance } from './fixture.js';

/** Outputs and losses, when the fixture does not say. */
export const DEFAULT_OUTPUT_TOLERANCE: Tolerance = { rtol: 1e-4, atol: 1e-5 };
/** Gradients, when the fixture does not say. */
export const DEFAULT_GRAD_TOLERANCE: Tolerance = { rtol: 1e-3, atol: 1e-4 };

export interface TensorCheck {
  name: string;
  ok: boolean;
  /** The runner did not compute this tensor. */
  missing: boolean;
  /** Largest |got - exp|. */
  maxError: number;
  /** Largest error as a fraction of its elementwise budget (<= 1 passes; Infinity for an integer mismatch). */
  budgetUsed: number;
  note?: string;
}

/** Tensors a fixture expects an implementation to reproduce. */
export function isCheckedTensor(name: string): boolean {
  return name.startsWith('expected.') || name.startsWith('grad_');
}

export function compareTensor(name: string, got: ArrayLike<number> | undefined, exp: SafeTensor, tol: Tolerance): TensorCheck {
  if (!got) return { name, ok: false, missing: true, maxError: Number.NaN, budgetUsed: Number.POSITIVE_INFINITY, note: 'not computed' };
  const e = exp.data;
  if (got.length !== e.length) {
    return { name, ok: false, missing: false, maxError: Number.NaN, budgetUsed: Number.POSITIVE_INFINITY, note: `size ${got.length}, expected ${e.length}` };
  }
  const integer = exp.dtype.startsWith('I') || exp.dtype === 'U8' || exp.dtype === 'BOOL';
  let maxAbs = 0;
  for (let i = 0; i < e.length; i++) maxAbs = Math.max(maxAbs, Math.abs(e[i]!));
  let maxError = 0;
  let budgetUsed = 0;
  for (let i = 0; i < e.length; i++) {
    const g = got[i]!;
    const x = e[i]!;
    if (!Number.isFinite(g)) {
      maxError = Number.POSITIVE_INFINITY;
      budgetUsed = Number.POSITIVE_INFINITY;
      break;
    }
    const err = Math.abs(g - x);
    maxError = Math.max(maxError, err);
    if (integer) {
      if (err !== 0) budgetUsed = Number.POSITIVE_INFINITY;
      continue;
    }
    const budget = tol.rtol * Math.abs(x) + tol.atol * maxAbs;
    budgetUsed = Math.max(budgetUsed, budget > 0 ? err / budget : err > 0 ? Number.POSITIVE_INFINITY : 0);
  }
  return { name, ok: budgetUsed <= 1, missing: false, maxError, budgetUsed };
}
