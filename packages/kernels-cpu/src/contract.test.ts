/**
 * The native header against core's kernel contract: every enum of src/native/kernels.h must be one
 * of the contract's code tables (enumerator = prefix + key in PascalCase, same value), and every
 * table must be in the header; and moelab-cpu registers every fused kernel the contract names.
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { BINARY_OP_CODE, FUSED_KERNELS, FUSED_MATMUL_ACTIVATION_CODE, MOE_ACTIVATION_CODE, REDUCE_CODE, UNARY_ACTIVATION_CODE } from '@moelab/core/kernels';
import { describe, expect, it } from 'vitest';
import { BACKEND_NAME, NATIVE_KERNELS } from './index.js';
import { status } from './testing/helpers.js';

/** The contract's code tables by the C++ enum that mirrors them, with the enumerators' prefix. */
const TABLES: Record<string, { prefix: string; codes: Record<string, number> }> = {
  MoeActivation: { prefix: 'kMoe', codes: MOE_ACTIVATION_CODE },
  BiasActivation: { prefix: 'kAct', codes: { ...FUSED_MATMUL_ACTIVATION_CODE, ...UNARY_ACTIVATION_CODE } },
  BinaryOp: { prefix: 'kBin', codes: BINARY_OP_CODE },
  ReduceKind: { prefix: 'kReduce', codes: REDUCE_CODE },
};

/** Every `enum Name { kA = 0, kB = 1 };` of a C++ header (comments removed; each value must be explicit). */
function parseEnums(source: string): Map<string, Map<string, number>> {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  const enums = new Map<string, Map<string, number>>();
  for (const m of code.matchAll(/\benum\s+(?:class\s+)?(\w+)\s*(?::\s*\w+\s*)?\{([^}]*)\}/g)) {
    const members = new Map<string, number>();
    for (const item of m[2]!.split(',').map((s) => s.trim())) {
      if (item === '') continue;
      const e = /^(\w+)\s*=\s*(-?\d+)$/.exec(item);
      if (!e) throw new Error(`kernels.h: enum ${m[1]}: '${item}' has no explicit integer value`);
      members.set(e[1]!, Number(e[2]));
    }
    enums.set(m[1]!, members);
  }
  return enums;
}

const pascal = (key: string) => key[0]!.toUpperCase() + key.slice(1);

describe('kernel contract', () => {
  const header = readFileSync(new URL('./native/kernels.h', import.meta.url), 'utf8');
  const enums = parseEnums(header);

  it('the header enums and the contract tables are the same sets', () => {
    expect([...enums.keys()].sort()).toEqual(Object.keys(TABLES).sort());
  });

  for (const [name, { prefix, codes }] of Object.entries(TABLES)) {
    it(`kernels.h ${name} equals the contract, in both directions`, () => {
      const fromContract = Object.entries(codes).map(([key, value]) => [prefix + pascal(key), value]);
      const fromHeader = [...(enums.get(name) ?? new Map<string, number>())];
      const byName = (a: (string | number)[], b: (string | number)[]) => String(a[0]).localeCompare(String(b[0]));
      expect(fromHeader.sort(byName)).toEqual(fromContract.sort(byName));
    });
  }

  it('codes within a table are distinct', () => {
    for (const { codes } of Object.values(TABLES)) {
      const values = Object.values(codes);
      expect(new Set(values).size).toBe(values.length);
    }
  });

  it('the parser reads every enum form the header may use, and rejects implicit values', () => {
    const parsed = parseEnums('// enum Skipped { kNo = 1 };\nenum A { kX = 0, kY = 2, // why\n kZ = -1 };\nenum class B : int { kW = 3 };');
    expect([...parsed]).toEqual([
      [
        'A',
        new Map([
          ['kX', 0],
          ['kY', 2],
          ['kZ', -1],
        ]),
      ],
      ['B', new Map([['kW', 3]])],
    ]);
    expect(() => parseEnums('enum C { kA = 0, kB };')).toThrow(/enum C: 'kB' has no explicit integer value/);
  });

  it('moelab-cpu lists and registers every fused kernel of the contract', () => {
    for (const name of FUSED_KERNELS) expect(NATIVE_KERNELS).toContain(name);
    if (!status.available) return;
    const missing = FUSED_KERNELS.filter((name) => !tf.getKernel(name, BACKEND_NAME));
    expect(missing).toEqual([]);
  });
});
