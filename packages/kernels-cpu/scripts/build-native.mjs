// Builds the native addon with node-gyp, offline, and never fails the install: without a compiler
// the package still installs and registerMoelabCpuBackend() reports `available: false` with the
// reason recorded here (build/moelab-build.json).
//
//   node scripts/build-native.mjs              build (pnpm install runs this)
//   node scripts/build-native.mjs --if-missing build only if the addon is absent or older than its
//                                              sources (pnpm build)
//   node scripts/build-native.mjs --force      rebuild
// Env: MOELAB_SKIP_NATIVE=1 skips the build; MOELAB_BLAS=none builds without OpenBLAS.
// pnpm 10 and npm 12 run a dependency's install script only once the user approves it: when this
// script never ran there is no build record, and loadNative() says how to approve and rebuild
// (the texts are in build-help.mjs).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildFailedHelp, installFailureMessage } from './build-help.mjs';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const addon = join(pkgDir, 'build', 'Release', 'moelab_cpu.node');
const statusFile = join(pkgDir, 'build', 'moelab-build.json');
const args = new Set(process.argv.slice(2));

function record(status) {
  mkdirSync(dirname(statusFile), { recursive: true });
  writeFileSync(statusFile, `${JSON.stringify({ ...status, node: process.version, date: new Date().toISOString() }, null, 2)}\n`);
}

function fail(reason, log = '') {
  record({ ok: false, reason, how: buildFailedHelp(), log: log.slice(-4000) });
  console.warn(installFailureMessage(reason));
  // Exit 0 on purpose: the package works without its addon (the `auto` backend falls back).
  process.exit(0);
}

if (process.env.MOELAB_SKIP_NATIVE === '1') fail('MOELAB_SKIP_NATIVE=1 was set at install time');
if (args.has('--if-missing') && existsSync(addon)) {
  // Up to date unless a native source (or the build file) changed since the addon was built.
  const srcDir = join(pkgDir, 'src', 'native');
  const sources = [join(pkgDir, 'binding.gyp'), ...readdirSync(srcDir).map((f) => join(srcDir, f))];
  const built = statSync(addon).mtimeMs;
  if (sources.every((f) => statSync(f).mtimeMs <= built)) process.exit(0);
}

const require = createRequire(import.meta.url);
let gyp;
try {
  gyp = require.resolve('node-gyp/bin/node-gyp.js');
} catch {
  fail('node-gyp is not installed');
}

// node-gyp downloads the Node headers unless it is told where they are; offline that fails. The
// headers ship next to the binary for official builds (<prefix>/include/node) and in /usr/include/node
// on Debian, so <prefix> of process.execPath covers both.
let nodedir = process.env.npm_config_nodedir;
if (!nodedir) {
  const prefix = resolve(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) nodedir = prefix;
}
const gypArgs = [gyp, 'rebuild', '--jobs=max'];
if (nodedir) gypArgs.push(`--nodedir=${nodedir}`);

const r = spawnSync(process.execPath, gypArgs, { cwd: pkgDir, encoding: 'utf8', env: process.env });
const log = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
if (r.error) fail(`node-gyp could not be run (${r.error.message})`, log);
if (r.status !== 0 || !existsSync(addon)) {
  // The most telling line: node-gyp's own exception, else the first compiler/linker error.
  const lines = log.split('\n');
  const firstError =
    lines.find((l) => /stack Error: /.test(l))?.replace(/.*stack Error: /, '') ??
    lines.find((l) => /error:|not found|No such file/i.test(l)) ??
    lines.find((l) => /ERR!/.test(l)) ??
    'see build/moelab-build.json';
  fail(`node-gyp failed (exit ${r.status}): ${firstError.trim()}`, log);
}
const blas = spawnSync(process.execPath, [join(pkgDir, 'scripts', 'detect-blas.mjs')], { encoding: 'utf8' }).stdout;
record({ ok: true, blas: blas === 'openblas' ? 'openblas' : 'builtin', nodedir: nodedir ?? null });
console.log(`[@moelab/kernels-cpu] native addon built (${blas === 'openblas' ? 'OpenBLAS' : 'builtin'} GEMM)`);
