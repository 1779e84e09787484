/**
 * Vitest setup file (listed in the root vitest.config.ts): with `MOELAB_TEST_BACKEND=moelab-cpu` it
 * registers the native backend and makes every `tf.setBackend('cpu')` in the suite select it, so the
 * unchanged test files run on the native kernels. Without the variable it does nothing.
 *
 *   MOELAB_TEST_BACKEND=moelab-cpu pnpm vitest run packages/core
 *
 * When the addon is not built the pass cannot run: the reason is printed and the tests run on `cpu`
 * (the plain pass already covers them), so a machine without a compiler still passes.
 */
const wanted = process.env.MOELAB_TEST_BACKEND;

if (wanted && wanted !== 'cpu') {
  if (wanted !== 'moelab-cpu') throw new Error(`MOELAB_TEST_BACKEND=${wanted}: only 'cpu' and 'moelab-cpu' are supported`);
  // The same tfjs instance the tests use (core's tf.ts re-exports this module).
  const tf = await import('@tensorflow/tfjs');
  const { registerMoelabCpuBackend } = await import('../index.js');
  const status = registerMoelabCpuBackend(tf);
  const g = globalThis as { __moelabTestBackendNoted?: boolean };
  if (!status.available) {
    if (!g.__moelabTestBackendNoted) console.warn(`[moelab-cpu test pass] skipped, running on cpu: ${status.reason}`);
    g.__moelabTestBackendNoted = true;
  } else {
    const engine = tf.engine();
    const setBackend = engine.setBackend.bind(engine);
    // tf.setBackend(name) is engine.setBackend(name): redirect the plain cpu backend to the native one.
    engine.setBackend = (name: string) => setBackend(name === 'cpu' ? 'moelab-cpu' : name);
    await setBackend('moelab-cpu');
  }
}

export {};
