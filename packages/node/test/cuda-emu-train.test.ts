// `moelab train` of a registered preset on moelab-cuda-emu (the CUDA kernels on the CPU emulation
// of the launch grid): a training step runs with no kernel falling back to the host, and its
// validation loss is the cpu backend's.
import { registerMoelabCudaBackend } from '@moelab/kernels-cuda';
import { describe, expect, it } from 'vitest';
import { runCli, tmp } from './helpers.js';
import * as tf from '@tensorflow/tfjs';

const emu = registerMoelabCudaBackend(tf, { emulate: true });

function trainPreset(preset: string, backend: string): { loss: number; out: string } {
  const dir = tmp('moelab-cuda-');
  const r = runCli([
    'train',
    '--preset',
    preset,
    '--backend',
    backend,
    '--steps',
    '1',
    '--batch',
    '1',
    '--seq',
    '8',
    '--eval-batches',
    '1',
    '--quiet',
    '--out',
    dir,
  ]);
  expect(r.code, r.err).toBe(0);
  const m = /val loss (\d+\.\d+)/.exec(r.out);
  expect(m, r.out).not.toBeNull();
  return { loss: Number(m![1]), out: `${r.out}${r.err}` };
}

describe.skipIf(!emu.available)(`moelab train on moelab-cuda-emu${emu.available ? '' : ` (skipped: ${emu.reason})`}`, () => {
  // moe-tiny exercises attention with RoPE, the softmax top-k router and the fused MoE experts; the
  // other presets are checked the same way by hand (packages/kernels-cuda/README.md), kept out of CI
  // for time.
  for (const preset of ['moe-tiny']) {
    it(`${preset}: no kernel falls back to the host, and the loss is the cpu backend's`, () => {
      const onEmu = trainPreset(preset, 'moelab-cuda-emu');
      expect(onEmu.out).toMatch(/backend: moelab-cuda-emu/);
      expect(onEmu.out).not.toMatch(/ran on the host/);
      expect(Math.abs(onEmu.loss - trainPreset(preset, 'cpu').loss)).toBeLessThan(2e-3);
    });
  }
});
