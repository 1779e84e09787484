/**
 * The device test run (bundled by scripts/device-bundle.mjs, run by scripts/device-check.sh on a GPU
 * machine): kernels-cuda's test files on `moelab-cuda` (MOELAB_CUDA_TEST_DEVICE=1), then a
 * device-memory leak check over repeated training steps of the fused MoE op; the summary goes to
 * the JSON file named by the first argument.
 */
import { writeFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { moeMLP } from '@moelab/kernels-cpu';
import { describe, expect, it, runAll } from 'vitest';
import '../../src/kernels.test.ts';
import '../../src/kernels/attention.test.ts';
import '../../src/kernels/data.test.ts';
import '../../src/kernels/fused.test.ts';
import '../../src/kernels/router.test.ts';
import '../../src/native.test.ts';
import { deviceMemory } from '../../src/register.js';
import { NAME, onDevice, status } from '../../src/testing/helpers.js';

// Sized for a GPU: on the emulation the suites' own leak test covers the bookkeeping.
describe.skipIf(!status.available || !onDevice)('device memory over repeated MoE training steps', () => {
  it('live device bytes return to their baseline after 20 steps', async () => {
    await tf.setBackend(NAME);
    const [T, d, h, E, k] = [512, 256, 512, 8, 2];
    const x = tf.randomNormal([T, d]);
    const w1 = tf.variable(tf.randomNormal([E, d, h], 0, 0.05));
    const w2 = tf.variable(tf.randomNormal([E, h, d], 0, 0.05));
    const tok = tf.tensor1d(
      Int32Array.from({ length: T * k }, (_, i) => Math.floor(i / k)),
      'int32',
    );
    const exp = tf.tensor1d(
      Int32Array.from({ length: T * k }, (_, i) => (i * 7) % E),
      'int32',
    );
    const weight = tf.fill([T * k], 0.5);
    const step = () =>
      tf.tidy(() => {
        const [g1, g2] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          moeMLP(x as tf.Tensor2D, a as tf.Tensor3D, b as tf.Tensor3D, tok as tf.Tensor1D, exp as tf.Tensor1D, weight as tf.Tensor1D, 'gelu', tf)
            .square()
            .mean(),
        )([w1, w2]);
        w1.assign(w1.sub(g1!.mul(0.01)));
        w2.assign(w2.sub(g2!.mul(0.01)));
      });
    step();
    const before = deviceMemory();
    for (let i = 0; i < 20; i++) step();
    const after = deviceMemory();
    expect(after.liveBytes, `live bytes after 20 steps (before: ${before.liveBytes})`).toBe(before.liveBytes);
    expect(after.liveBuffers).toBe(before.liveBuffers);
    tf.dispose([x, w1, w2, tok, exp, weight]);
  });
});

const summary = await runAll();
const file = process.argv[2];
if (file) writeFileSync(file, `${JSON.stringify({ backend: NAME, status, ...summary }, null, 2)}\n`);
console.log(`device tests: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped`);
// On the GPU machine a device that does not answer skips every suite: that is a failed check.
if (onDevice && !status.available) console.log(`device tests: the device did not answer: ${status.reason}`);
process.exitCode = summary.failed > 0 || (onDevice && !status.available) ? 1 : 0;
