import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { type SafeTensor, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { compareTensor, fixtureKinds, parseFixture, parseFixtureDoc, verifyFixture } from './index.js';

const f32 = (...v: number[]): SafeTensor => ({ dtype: 'F32', shape: [v.length], data: Float32Array.from(v) });
const i64 = (...v: number[]): SafeTensor => ({ dtype: 'I64', shape: [v.length], data: Int32Array.from(v) });

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('tolerance rule', () => {
  const tol = { rtol: 1e-3, atol: 1e-4 };
  it('budget = rtol·|exp| + atol·max|exp|, elementwise', () => {
    // max|exp| = 10: budget of element 0 is 1e-3·1 + 1e-4·10 = 2e-3
    expect(compareTensor('a', [1.0019, 10], f32(1, 10), tol).ok).toBe(true);
    const c = compareTensor('a', [1.0021, 10], f32(1, 10), tol);
    expect(c.ok).toBe(false);
    expect(c.budgetUsed).toBeCloseTo(0.0021 / 0.002, 2);
    expect(c.maxError).toBeCloseTo(0.0021, 6);
  });
  it('integer tensors must match exactly; non-finite values, wrong sizes and missing tensors fail', () => {
    expect(compareTensor('i', [3, 1], i64(3, 1), tol).ok).toBe(true);
    expect(compareTensor('i', [3, 2], i64(3, 1), tol).budgetUsed).toBe(Number.POSITIVE_INFINITY);
    expect(compareTensor('a', [Number.NaN, 1], f32(0, 1), tol).ok).toBe(false);
    expect(compareTensor('a', [1], f32(1, 2), tol)).toMatchObject({ ok: false, note: 'size 1, expected 2' });
    expect(compareTensor('a', undefined, f32(1), tol)).toMatchObject({ ok: false, missing: true });
  });
});

describe('fixture documents', () => {
  it('reads the NaN / Infinity tokens Python writes as null, and names missing fields', () => {
    const doc = parseFixtureDoc('{"kind":"peer","tensors":{},"config":{"margin":NaN,"m":-Infinity}}', 'x.json');
    expect(doc.config).toEqual({ margin: null, m: null });
    expect(doc.name).toBe('x.json');
    expect(() => parseFixtureDoc('{"tensors":{}}', 'x.json')).toThrow(/x.json: \$\.kind: missing "kind"/);
    expect(() => parseFixtureDoc('{"kind":"peer"}', 'x.json')).toThrow(/\$\.tensors: missing "tensors" table/);
    expect(() => parseFixtureDoc('{nope', 'x.json')).toThrow(/x.json: not valid JSON/);
  });

  it('an unknown kind names the close kinds', () => {
    const fx = { doc: parseFixtureDoc('{"name":"f","kind":"sigma-moe","tensors":{}}'), tensors: new Map() };
    expect(() => verifyFixture(fx)).toThrow(/f: \$\.kind: no runner for fixture kind "sigma-moe"\. Did you mean: sigma_moe/);
    expect(fixtureKinds).toEqual(['moa', 'moeut_lm', 'monet_hd', 'monet_vd', 'peer', 'sigma_moe', 'smore_layer', 'switchhead']);
  });

  it('a reference tensor the runner does not produce fails as missing; a perturbed one fails its budget', () => {
    const dir = fileURLToPath(new URL('../../../fixtures/moeut/', import.meta.url));
    const fx = parseFixture(
      readFileSync(`${dir}sigma_moe_p1.json`, 'utf8'),
      new Uint8Array(readFileSync(`${dir}sigma_moe_p1.safetensors`)),
      'sigma_moe_p1.json',
    );
    fx.tensors.set('expected.not_a_tensor', f32(1));
    const out = fx.tensors.get('expected.out')!;
    const shifted = Float32Array.from(out.data);
    shifted[0]! += 1e-2 * Math.max(...Array.from(shifted, Math.abs));
    fx.tensors.set('expected.out', { ...out, data: shifted });
    tf.engine().startScope();
    const report = verifyFixture(fx);
    tf.engine().endScope();
    expect(report.ok).toBe(false);
    const failed = report.checks.filter((c) => !c.ok);
    expect(failed.map((c) => c.name)).toEqual(['expected.not_a_tensor', 'expected.out']);
    expect(failed[0]).toMatchObject({ missing: true });
    expect(failed[1]!.budgetUsed).toBeGreaterThan(1);
  });
});
