/**
 * Every public MONET and PEER golden fixture (repo `fixtures/monet/`, `fixtures/peer/`, copied from the
 * shared fixtures) passes in both modes with the fixture's own tolerance rule: every expected / gradient
 * tensor is computed (0 missing) and within budget, and the runner leaves no tensor behind.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { corePlugin, createRegistry, parseFixtureDoc, readSafetensors, tf, verifyFixture } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { experts } from '../src/index.js';

const root = fileURLToPath(new URL('../../../fixtures/', import.meta.url));
const list = (dir: string) =>
  readdirSync(`${root}${dir}`)
    .filter((f) => f.endsWith('.json'))
    .map((f) => `${dir}/${f.replace(/\.json$/, '')}`)
    .sort();
const names = [...list('monet'), ...list('peer')];

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('MONET and PEER golden fixtures', () => {
  const registry = createRegistry(corePlugin, experts);

  it('all six public fixtures are present', () => {
    expect(names).toEqual(['monet/monet_hd_p1', 'monet/monet_hd_p2', 'monet/monet_vd_p1', 'monet/monet_vd_p2', 'peer/peer_p1', 'peer/peer_p2']);
  });

  for (const name of names) {
    it(name, () => {
      const doc = parseFixtureDoc(readFileSync(`${root}${name}.json`, 'utf8'), name);
      const { tensors } = readSafetensors(new Uint8Array(readFileSync(`${root}${name}.safetensors`)), name);
      const before = tf.memory().numTensors;
      tf.engine().startScope();
      const report = verifyFixture({ doc, tensors }, registry);
      tf.engine().endScope();
      const expectedNames = Object.keys(doc.tensors).filter((n) => n.startsWith('expected.') || n.startsWith('grad_'));
      expect(report.checks.map((c) => c.name).sort()).toEqual(expectedNames.sort());
      // both modes are covered
      expect(expectedNames.some((n) => n.includes('.train.'))).toBe(true);
      expect(expectedNames.some((n) => n.includes('.eval.'))).toBe(true);
      const bad = report.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.missing ? 'missing' : `${(100 * c.budgetUsed).toFixed(1)}% of budget`}`);
      expect(bad).toEqual([]);
      expect(report.checks.filter((c) => c.missing)).toHaveLength(0);
      expect(report.ok).toBe(true);
      const worst = report.checks.reduce((w, c) => (c.budgetUsed > w.budgetUsed ? c : w));
      console.log(`${name}: ${report.checks.length} tensors, worst ${(100 * worst.budgetUsed).toFixed(2)}% of budget (${worst.name})`);
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});
