import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { NATIVE_KERNELS } from '../backend.js';
import type { NativeAddon } from '../native.js';
import { nativeKernels } from './index.js';

describe('kernel families', () => {
  // Registration only captures the addon (kernels call it when they run), so this needs no build.
  const configs = nativeKernels(tf, {} as NativeAddon, 'moelab-cpu-registry-test');

  it('register each kernel once, and exactly the kernels NATIVE_KERNELS lists', () => {
    const names = configs.map((c) => c.kernelName);
    expect(new Set(names).size).toBe(names.length);
    expect([...names].sort()).toEqual([...NATIVE_KERNELS].sort());
  });

  it('register every kernel for the backend they were asked for', () => {
    expect(new Set(configs.map((c) => c.backendName))).toEqual(new Set(['moelab-cpu-registry-test']));
  });
});
