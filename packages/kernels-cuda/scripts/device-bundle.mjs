// Bundles what scripts/device-check.sh runs on a GPU machine that has no node_modules: the test
// files (with vitest replaced by device/vitest-shim.mjs) and `moelab bench` for moelab-cuda, each
// into one ES module under packages/kernels-cuda/device/ (git-ignored), with tfjs and every
// @moelab package inlined from their sources. Also copies node-addon-api's headers there, for the
// addon build. Run on the development machine: node packages/kernels-cuda/scripts/device-bundle.mjs
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const root = resolve(pkgDir, '..', '..');
const out = join(pkgDir, 'device');
mkdirSync(out, { recursive: true });

// The workspace aliases of vitest.config.ts: @moelab/<dir> and its subpath exports -> sources.
const alias = {};
for (const dir of readdirSync(join(root, 'packages'))) {
  const entry = join(root, 'packages', dir, 'src', 'index.ts');
  if (!existsSync(entry)) continue;
  const { exports = {} } = JSON.parse(readFileSync(join(root, 'packages', dir, 'package.json'), 'utf8'));
  for (const [sub, target] of Object.entries(exports)) {
    const source = target.default?.replace(/^\.\/dist\//, 'src/').replace(/\.js$/, '.ts');
    if (sub !== '.' && source) alias[`@moelab/${dir}/${sub.slice(2)}`] = join(root, 'packages', dir, source);
  }
  alias[`@moelab/${dir}`] = entry;
}
alias.vitest = join(pkgDir, 'scripts', 'device', 'vitest-shim.mjs');

const requireRoot = createRequire(join(root, 'package.json'));
const { rolldown } = await import(requireRoot.resolve('rolldown'));
const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
for (const [name, input] of [
  ['tests.mjs', join(pkgDir, 'scripts', 'device', 'tests-entry.ts')],
  ['bench.mjs', join(pkgDir, 'scripts', 'device', 'bench-entry.ts')],
]) {
  const bundle = await rolldown({
    input,
    cwd: root,
    platform: 'node',
    resolve: { alias },
    external: (id) => builtins.has(id) || id.endsWith('.node'),
    logLevel: process.env.DEVICE_BUNDLE_LOG ?? 'silent',
    // The test files are imported for their side effects (they register tests), and the packages say
    // sideEffects: false: mark them as having side effects.
    plugins: [
      {
        name: 'keep-test-files',
        transform(code, id) {
          return /\.test\.ts$/.test(id) ? { code, moduleSideEffects: true } : null;
        },
      },
    ],
  });
  await bundle.write({ file: join(out, name), format: 'esm', codeSplitting: false });
  await bundle.close();
  console.log(`device-bundle: ${join(out, name)}`);
}
const napi = dirname(createRequire(join(pkgDir, 'package.json')).resolve('node-addon-api/package.json'));
cpSync(napi, join(out, 'node-addon-api'), { recursive: true, filter: (f) => !f.includes(`${napi}/node_modules`) });
console.log(`device-bundle: ${join(out, 'node-addon-api')}`);
