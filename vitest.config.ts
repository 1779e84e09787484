import { readdirSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Tests import workspace packages from their TypeScript sources, so a change in one package is seen by
// the tests of another without a rebuild. (The CLI tests run the built `dist/cli.js`, which `pnpm test`
// builds first.)
const root = fileURLToPath(new URL('.', import.meta.url));
const alias: Record<string, string> = {};
for (const dir of readdirSync(`${root}packages`)) {
  const entry = `${root}packages/${dir}/src/index.ts`;
  if (existsSync(entry)) alias[`@moelab/${dir}`] = entry;
}

export default defineConfig({
  resolve: { alias },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'packages/*/test/**/*.test.ts', 'apps/*/test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two cores: more workers only fight over them.
    maxWorkers: 2,
    minWorkers: 1,
    reporters: ['default'],
    // MOELAB_TEST_BACKEND=moelab-cpu runs the suite on the native kernels (see that file).
    setupFiles: ['packages/kernels-cpu/src/testing/vitest-backend.ts'],
  },
});
