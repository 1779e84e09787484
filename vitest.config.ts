import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Tests import workspace packages from their TypeScript sources, so a change in one package is seen by
// the tests of another without a rebuild. (The CLI tests run the built `dist/cli.js`, which `pnpm test`
// builds first.) Subpath exports (`@moelab/core/kernels`) map to their sources too; they come first,
// because an alias also matches every path below it.
const root = fileURLToPath(new URL('.', import.meta.url));
const subpaths: Record<string, string> = {};
const alias: Record<string, string> = {};
for (const dir of readdirSync(`${root}packages`)) {
  const entry = `${root}packages/${dir}/src/index.ts`;
  if (!existsSync(entry)) continue;
  alias[`@moelab/${dir}`] = entry;
  const { exports = {} } = JSON.parse(readFileSync(`${root}packages/${dir}/package.json`, 'utf8')) as {
    exports?: Record<string, { default?: string }>;
  };
  for (const [sub, target] of Object.entries(exports)) {
    const source = target.default?.replace(/^\.\/dist\//, 'src/').replace(/\.js$/, '.ts');
    if (sub !== '.' && source && existsSync(`${root}packages/${dir}/${source}`)) {
      subpaths[`@moelab/${dir}/${sub.slice(2)}`] = `${root}packages/${dir}/${source}`;
    }
  }
}

export default defineConfig({
  resolve: { alias: { ...subpaths, ...alias } },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'packages/*/test/**/*.test.ts', 'apps/*/test/**/*.test.ts', 'test/**/*.test.ts'],
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
