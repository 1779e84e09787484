/**
 * `moelab bench` for moelab-cuda on a GPU machine without node_modules (bundled by
 * scripts/device-bundle.mjs): the same rows and JSON as `pnpm bench --json`, with the backend
 * candidate registered from the bundle itself (the CLI finds @moelab/kernels-cuda by a dynamic
 * import, which a bundle cannot follow). Usage: node bench.mjs OUT.json [backends] [--quick]
 */
import { registerBackendCandidate, tf } from '@moelab/core';
import { registerNodeBackends } from '../../../node/src/backends.js';
import { runBenchBackends } from '../../../node/src/bench.js';
import { registerMoelabCudaBackend } from '../../src/register.js';

registerNodeBackends();
registerBackendCandidate({
  name: 'moelab-cuda',
  priority: 75,
  load: async () => {
    const r = registerMoelabCudaBackend(tf);
    return { ok: r.available, reason: r.reason };
  },
});
const [json, backends = 'moelab-cuda'] = process.argv.slice(2).filter((a) => !a.startsWith('--'));
await runBenchBackends({ json, backends, quick: process.argv.includes('--quick') } as Parameters<typeof runBenchBackends>[0]);

// The kernel rows: C = A B at 4096^3 (the GEMM target; TF32 tensor cores and FP32) and the
// flash-tiled causal attention forward and forward + backward at B 4, H 8, T 1024, d 64; best of
// 5 after a warm-up, each synchronised with the device.
const { CAUSAL_ATTENTION_KERNEL } = await import('@moelab/core/kernels');
const { loadAddon } = await import('../../src/native.js');
const { addon } = loadAddon('device');
if (addon && json) {
  const { writeFileSync } = await import('node:fs');
  await tf.setBackend('moelab-cuda');
  const rows: { name: string; tflops: number; ms: number }[] = [];
  const time = (name: string, flops: number, run: () => void) => {
    let best = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 6; i++) {
      const start = performance.now();
      run();
      addon.sync();
      const ms = performance.now() - start;
      if (i > 0) best = Math.min(best, ms);
    }
    rows.push({ name, ms: best, tflops: flops / (best / 1000) / 1e12 });
  };
  const n = 4096;
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  for (const tf32 of [true, false]) {
    addon.setTf32(tf32);
    time(`gemm_${n}_${tf32 ? 'tf32' : 'fp32'}`, 2 * n ** 3, () => tf.matMul(a, b).dispose());
  }
  tf.dispose([a, b]);
  const [B, H, T, d] = [4, 8, 1024, 64];
  const [q, k, v] = [0, 1, 2].map(() => tf.randomNormal([B, H, T, d]));
  const attention = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) =>
    (tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q: x, k: y, v: z }, { scale: 1 / Math.sqrt(d) }) as tf.Tensor[])[0]!;
  // Causal: half of the T^2 score matrix; forward 2 GEMM-like products, backward 5.
  const flopsForward = 2 * 2 * B * H * d * ((T * (T + 1)) / 2);
  time(`attention_forward_b${B}h${H}t${T}d${d}`, flopsForward, () => attention(q!, k!, v!).dispose());
  const grads = tf.grads((x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) => attention(x, y, z).sum());
  time(`attention_forward_backward_b${B}h${H}t${T}d${d}`, (flopsForward * 7) / 2, () => tf.dispose(grads([q!, k!, v!])));
  tf.dispose([q!, k!, v!]);
  writeFileSync(json.replace(/\.json$/, '') + '.kernels.json', `${JSON.stringify({ device: addon.info(), rows }, null, 2)}\n`);
  console.log(rows.map((r) => `${r.name}: ${r.tflops.toFixed(1)} TFLOP/s (${r.ms.toFixed(1)} ms)`).join('\n'));
}
