/**
 * Every golden fixture in the repository's `fixtures/` (one folder per system) passes with the fixture's
 * own tolerance rule: every expected / gradient tensor is computed (none missing) and within budget, and
 * the runner leaves no tensor behind.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtureKinds, parseFixture, verifyFixture, verifyRegistry } from '../src/index.js';

const root = fileURLToPath(new URL('../../../fixtures/', import.meta.url));
const names = readdirSync(root, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .flatMap((d) =>
    readdirSync(`${root}${d.name}`)
      .filter((f) => f.endsWith('.json'))
      .map((f) => `${d.name}/${f.replace(/\.json$/, '')}`),
  )
  .sort();

const load = (name: string) =>
  parseFixture(readFileSync(`${root}${name}.json`, 'utf8'), new Uint8Array(readFileSync(`${root}${name}.safetensors`)), `${name}.json`);

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('golden fixtures', () => {
  const registry = verifyRegistry();

  it('the public fixtures of every system are present, and every kind has one', () => {
    expect(names).toEqual(
      expect.arrayContaining([
        'moa/moa_p1',
        'moa/moa_p2_k_eq_E_cv',
        'moeut/moeut_lm_p1',
        'moeut/moeut_lm_p2',
        'moeut/sigma_moe_p1',
        'moeut/sigma_moe_p2',
        'moeut/switchhead_p1',
        'moeut/switchhead_p2',
        'moeut/switchhead_p3_dense_gated',
        'monet/monet_hd_p1',
        'monet/monet_hd_p2',
        'monet/monet_vd_p1',
        'monet/monet_vd_p2',
        'peer/peer_p1',
        'peer/peer_p2',
        'smore/smore_p1_switch',
        'smore/smore_p2_dense_3pools',
        'smore/smore_p3_switch_f1_childv2',
      ]),
    );
    const kinds = new Set(names.map((n) => load(n).doc.kind));
    for (const kind of fixtureKinds) expect(kinds.has(kind)).toBe(true);
  });

  for (const name of names) {
    it(name, () => {
      const fx = load(name);
      const verify = () => {
        tf.engine().startScope();
        try {
          return verifyFixture(fx, registry);
        } finally {
          tf.engine().endScope();
        }
      };
      verify(); // warms the per-length caches (causal mask, RoPE tables) that attention keeps
      const before = tf.memory().numTensors;
      const report = verify();
      const expectedNames = Object.keys(fx.doc.tensors).filter((n) => n.startsWith('expected.') || n.startsWith('grad_'));
      expect(report.checks.map((c) => c.name).sort()).toEqual(expectedNames.sort());
      const bad = report.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.missing ? 'missing' : `${(100 * c.budgetUsed).toFixed(1)}% of budget`}`);
      expect(bad).toEqual([]);
      expect(report.ok).toBe(true);
      const worst = report.checks.reduce((w, c) => (c.budgetUsed > w.budgetUsed ? c : w));
      console.log(`${name}: ${report.checks.length} tensors, worst ${(100 * worst.budgetUsed).toFixed(2)}% of budget (${worst.name})`);
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});
