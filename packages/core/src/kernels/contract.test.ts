import { describe, expect, it } from 'vitest';
import { ACTIVATIONS } from '../nn/activations.js';
import { FUSED_KERNELS, isMoeActivation, MOE_ACTIVATION_CODE } from './contract.js';

describe('kernel contract', () => {
  it('names each fused kernel once, every name Moelab-prefixed (tfjs keys kernels by name, globally)', () => {
    expect(new Set(FUSED_KERNELS).size).toBe(FUSED_KERNELS.length);
    for (const name of FUSED_KERNELS) expect(name).toMatch(/^Moelab[A-Z]\w+$/);
  });

  it('every fused MoE activation is one of core activations, and only those pass isMoeActivation', () => {
    for (const a of Object.keys(MOE_ACTIVATION_CODE)) expect(ACTIVATIONS).toContain(a);
    expect(ACTIVATIONS.filter(isMoeActivation).sort()).toEqual(Object.keys(MOE_ACTIVATION_CODE).sort());
    // Own keys only: an inherited name is no activation.
    expect(isMoeActivation('toString')).toBe(false);
    expect(isMoeActivation('gelu-tanh')).toBe(false);
  });
});
