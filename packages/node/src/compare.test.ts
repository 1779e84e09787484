import { describe, expect, it } from 'vitest';
import { usageLine } from './compare.js';

describe('compare: expert usage lines', () => {
  it('lists every expert of a small bank', () => {
    expect(usageLine([0.5, 0.25, 0.25, 0])).toBe('50 25 25 0');
  });
  it('summarises a large bank instead of printing thousands of numbers', () => {
    const load = Array.from({ length: 4096 }, (_, i) => (i < 96 ? 0 : 1 / 4000));
    expect(usageLine(load)).toBe('4096 experts: min 0.000%, median 0.025%, max 0.025%, unused 96');
  });
});
