import { describe, expect, it } from 'vitest';
import { branched, denseSpec, registry, source } from '../test/helpers.js';
import { checkCompatible, meanSpread } from './index.js';

describe('preconditions of merging dense models', () => {
  const reg = registry();
  const a = source('A', denseSpec(), 1);

  it('accepts models of one architecture; the spread of branched copies is small, of unrelated ones near √(N−1)', () => {
    const b = branched(a, 'B', 2);
    expect(() =>
      checkCompatible(reg, [
        { role: 'seed', source: a },
        { role: 'experts[0]', source: b },
      ]),
    ).not.toThrow();
    const names = [...a.weights.keys()];
    expect(meanSpread([a, b], names)).toBeLessThan(0.1);
    const c = source('C', denseSpec(), 7);
    expect(meanSpread([a, c], names)).toBeGreaterThan(0.5);
  });

  it('refuses different architectures, vocabularies and tensor shapes with one line naming the source and the field', () => {
    const wide = source('W', denseSpec({ hidden: 48 }), 1);
    expect(() =>
      checkCompatible(reg, [
        { role: 'seed', source: a },
        { role: 'experts[0]', source: wide },
      ]),
    ).toThrow(/^experts\[0\] \(W\): architecture differs from seed \(A\): \$\.layers\[0\]\.ffn\.hidden is 48 here and 32 there/);
    const vocab = source('V', { ...denseSpec(), vocabSize: 128 }, 1);
    expect(() =>
      checkCompatible(reg, [
        { role: 'seed', source: a },
        { role: 'experts[1]', source: vocab },
      ]),
    ).toThrow(/experts\[1\] \(V\): \$\.vocabSize: vocabulary of 128 tokens differs from seed \(A\)'s 256/);
    const seq = source('S', denseSpec({ layout: 'sequential' }), 1);
    expect(() =>
      checkCompatible(reg, [
        { role: 'seed', source: a },
        { role: 'experts[0]', source: seq },
      ]),
    ).toThrow(/layout is "sequential" here and "parallel" there/);
    const cut = { ...a, name: 'X', weights: new Map([...a.weights].filter(([n]) => n !== 'out_norm.weight')) };
    expect(() =>
      checkCompatible(reg, [
        { role: 'seed', source: a },
        { role: 'experts[0]', source: cut },
      ]),
    ).toThrow(/experts\[0\] \(X\): tensor "out_norm.weight" of seed \(A\) is missing/);
    const bent = { ...a, name: 'Y', weights: new Map(a.weights) };
    bent.weights.set('out_norm.weight', { shape: [8], data: new Float32Array(8) });
    expect(() =>
      checkCompatible(reg, [
        { role: 'seed', source: a },
        { role: 'experts[0]', source: bent },
      ]),
    ).toThrow(/tensor "out_norm.weight" has shape \[8\], seed \(A\) has \[16\]/);
  });
});
