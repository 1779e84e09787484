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

// The GEMM target: C = A B at 4096^3 on the device, TF32 tensor cores and FP32, best of 5 after a warm-up.
const { loadAddon } = await import('../../src/native.js');
const { addon } = loadAddon('device');
if (addon && json) {
  const { writeFileSync } = await import('node:fs');
  await tf.setBackend('moelab-cuda');
  const n = 4096;
  const rows: { name: string; tflops: number; ms: number }[] = [];
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  for (const tf32 of [true, false]) {
    addon.setTf32(tf32);
    let best = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 6; i++) {
      const start = performance.now();
      const c = tf.matMul(a, b);
      addon.sync();
      const ms = performance.now() - start;
      c.dispose();
      if (i > 0) best = Math.min(best, ms);
    }
    rows.push({ name: `gemm_${n}_${tf32 ? 'tf32' : 'fp32'}`, ms: best, tflops: (2 * n ** 3) / (best / 1000) / 1e12 });
  }
  tf.dispose([a, b]);
  writeFileSync(json.replace(/\.json$/, '') + '.gemm.json', `${JSON.stringify({ device: addon.info(), rows }, null, 2)}\n`);
  console.log(rows.map((r) => `${r.name}: ${r.tflops.toFixed(1)} TFLOP/s (${r.ms.toFixed(1)} ms)`).join('\n'));
}
