import { describe, expect, it } from 'vitest';
import { carryKey, ensureCarry, forwardContext, privateCarryKey, readCarry, takeCarry, writeCarry } from './module.js';
import { Rng } from './rng.js';

describe('ForwardContext.carry (per-forward state)', () => {
  it('keys with the same name share a slot; private keys never collide', () => {
    const ctx = forwardContext(new Rng(0), true);
    expect(ctx.carry).toBeUndefined();
    expect(readCarry(ctx, carryKey<number>('group:a'))).toBeUndefined();
    writeCarry(ctx, carryKey<number>('group:a'), 3);
    expect(readCarry(ctx, carryKey<number>('group:a'))).toBe(3);
    const p1 = privateCarryKey<number[]>('calls');
    const p2 = privateCarryKey<number[]>('calls');
    expect(p1.name).not.toBe(p2.name);
    ensureCarry(ctx, p1, () => []).push(1);
    ensureCarry(ctx, p1, () => []).push(2);
    expect(readCarry(ctx, p1)).toEqual([1, 2]);
    expect(readCarry(ctx, p2)).toBeUndefined();
    expect(takeCarry(ctx, p1)).toEqual([1, 2]);
    expect(readCarry(ctx, p1)).toBeUndefined();
    expect(takeCarry(ctx, p2)).toBeUndefined();
  });

  it('a fresh context starts without carried state', () => {
    const a = forwardContext(new Rng(0), true);
    writeCarry(a, carryKey<string>('x'), 'a');
    expect(readCarry(forwardContext(new Rng(0), true), carryKey<string>('x'))).toBeUndefined();
  });
});
