/**
 * Every public MoEUT golden fixture (repo `fixtures/moeut/`, copied from the shared fixtures) passes with
 * the fixture's own tolerance rule: every expected / gradient tensor is computed and within budget.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { corePlugin, createRegistry, parseFixtureDoc, readSafetensors, tf, verifyFixture } from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import { attention } from '../src/index.js';

const dir = fileURLToPath(new URL('../../../fixtures/moeut/', import.meta.url));
const names = readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .map((f) => f.replace(/\.json$/, ''))
  .sort();

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('MoEUT golden fixtures', () => {
  const registry = createRegistry(corePlugin, routers, experts, attention);

  it('all seven public fixtures are present', () => {
    expect(names).toEqual(['moeut_lm_p1', 'moeut_lm_p2', 'sigma_moe_p1', 'sigma_moe_p2', 'switchhead_p1', 'switchhead_p2', 'switchhead_p3_dense_gated']);
  });

  for (const name of names) {
    it(name, () => {
      const doc = parseFixtureDoc(readFileSync(`${dir}${name}.json`, 'utf8'), name);
      const { tensors } = readSafetensors(new Uint8Array(readFileSync(`${dir}${name}.safetensors`)), name);
      const verify = () => {
        tf.engine().startScope();
        const r = verifyFixture({ doc, tensors }, registry);
        tf.engine().endScope();
        return r;
      };
      verify(); // warms the per-length caches (causal mask, RoPE tables)
      const before = tf.memory().numTensors;
      const report = verify();
      const expectedNames = Object.keys(doc.tensors).filter((n) => n.startsWith('expected.') || n.startsWith('grad_'));
      expect(report.checks.map((c) => c.name).sort()).toEqual(expectedNames.sort());
      const bad = report.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.missing ? 'missing' : `${(100 * c.budgetUsed).toFixed(1)}% of budget`}`);
      expect(bad).toEqual([]);
      expect(report.checks.filter((c) => c.missing)).toHaveLength(0);
      expect(report.ok).toBe(true);
      const worst = Math.max(...report.checks.map((c) => c.budgetUsed));
      console.log(`${name}: ${report.checks.length} tensors, worst ${(100 * worst).toFixed(2)}% of budget`);
      // The runner cleans up after itself (model variables disposed, no tensors left behind).
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});
