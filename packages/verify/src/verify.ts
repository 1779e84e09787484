/**
 * Run a fixture's runner and check every `expected.*` / `grad_*` tensor it holds with the fixture's
 * tolerance rule (compare.ts). A tensor the runner did not compute fails as `missing`.
 */
import { attention } from '@moelab/attention';
import { closeMatches, corePlugin, createRegistry, MoelabError, type Registry } from '@moelab/core';
import { experts } from '@moelab/experts';
import { finetune } from '@moelab/finetune';
import { routers } from '@moelab/routers';
import { compareTensor, DEFAULT_GRAD_TOLERANCE, DEFAULT_OUTPUT_TOLERANCE, isCheckedTensor, type TensorCheck } from './compare.js';
import type { Fixture } from './fixture.js';
import { fixtureKinds, fixtureRunners, isFixtureKind } from './runners/index.js';

export interface VerifyReport {
  name: string;
  kind: string;
  ok: boolean;
  /** One check per expected / gradient tensor, sorted by name. */
  checks: TensorCheck[];
}

/** The registry runners build from when the caller gives none: core and the built-in plugins. */
export function verifyRegistry(): Registry {
  return createRegistry(corePlugin, routers, experts, attention, finetune);
}

/**
 * Check one fixture. `registry` must hold the plugins the fixture's system is built from (default: core,
 * routers, experts, attention and finetune). Tensors the runner creates are disposed before it returns.
 */
export function verifyFixture(fx: Fixture, registry: Registry = verifyRegistry()): VerifyReport {
  const kind = fx.doc.kind;
  if (!isFixtureKind(kind)) {
    const close = closeMatches(kind, fixtureKinds);
    const hint = close.length ? ` Did you mean: ${close.join(', ')}?` : ` Known kinds: ${fixtureKinds.join(', ')}.`;
    throw new MoelabError(`no runner for fixture kind "${kind}".${hint}`, `${fx.doc.name}: $.kind`);
  }
  const got = fixtureRunners[kind](fx, registry);
  const outTol = fx.doc.tolerances?.outputs_and_losses ?? fx.doc.tolerance?.outputs ?? DEFAULT_OUTPUT_TOLERANCE;
  const gradTol = fx.doc.tolerances?.grads ?? fx.doc.tolerance?.grads ?? DEFAULT_GRAD_TOLERANCE;
  const checks: TensorCheck[] = [];
  for (const [name, exp] of [...fx.tensors.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    if (!isCheckedTensor(name)) continue;
    checks.push(compareTensor(name, got.get(name), exp, name.startsWith('grad_') ? gradTol : outTol));
  }
  return { name: fx.doc.name, kind, ok: checks.length > 0 && checks.every((c) => c.ok), checks };
}
