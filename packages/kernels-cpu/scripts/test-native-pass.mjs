// The second pass of `pnpm test`: the whole suite again on the native `moelab-cpu` backend
// (MOELAB_TEST_BACKEND=moelab-cpu, honoured by src/testing/vitest-backend.ts), except this package's
// own tests, which already compare moelab-cpu with cpu. When the addon is not built the pass is
// skipped with the reason (the plain pass already ran everything) and this exits 0.
//   node packages/kernels-cpu/scripts/test-native-pass.mjs [extra vitest args]
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const root = resolve(pkgDir, '..', '..');
if (!existsSync(join(pkgDir, 'build', 'Release', 'moelab_cpu.node'))) {
  let why = 'the native addon was not built';
  try {
    const s = JSON.parse(readFileSync(join(pkgDir, 'build', 'moelab-build.json'), 'utf8'));
    if (s.reason) why += `: ${s.reason}`;
  } catch {
    /* no build record */
  }
  console.log(`[moelab-cpu test pass] skipped: ${why}. The suite ran on the plain cpu backend only.`);
  process.exit(0);
}
console.log('[moelab-cpu test pass] running the suite on the native backend (MOELAB_TEST_BACKEND=moelab-cpu)');
const r = spawnSync('pnpm', ['exec', 'vitest', 'run', '--exclude', 'packages/kernels-cpu/**', ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, MOELAB_TEST_BACKEND: 'moelab-cpu' },
});
process.exit(r.status ?? 1);
