// Compiles kernels-cpu's C++ kernels (../kernels-cpu/src/native, shared, not copied) and
// native/exports.cc to WebAssembly with Emscripten: build/moelab-kernels.wasm and its JavaScript
// loader build/moelab-kernels.mjs, which the published package ships (an npm user needs no
// compiler). Run by `pnpm build`; never fails it: without emcc the build is skipped with the reason
// printed and recorded in build/moelab-wasm-build.json, and the backend reports it as unavailable.
//
//   node scripts/build-wasm.mjs              build when missing or older than a source
//   node scripts/build-wasm.mjs --force      rebuild
// Env: EMCC=<path> picks the compiler; MOELAB_SKIP_WASM=1 skips the build.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const sharedDir = resolve(pkgDir, '..', 'kernels-cpu', 'src', 'native');
const outDir = join(pkgDir, 'build');
const outputs = ['moelab-kernels.mjs', 'moelab-kernels.wasm'];
const statusFile = join(outDir, 'moelab-wasm-build.json');
const force = process.argv.includes('--force');

// The kernels (every translation unit of the Node addon but its Node-API bindings) and the exports.
const SHARED = ['attention.cc', 'gemm.cc', 'kernels.cc', 'moe.cc', 'moe_glu.cc', 'norm.cc', 'pool.cc', 'quant.cc'];
const sources = [join(pkgDir, 'native', 'exports.cc'), ...SHARED.map((f) => join(sharedDir, f))];

export const EMCC_HELP = 'Install Emscripten (Debian/Ubuntu: apt-get install -y emscripten), then run `pnpm --filter @moelab/kernels-wasm build`.';

function record(status) {
  mkdirSync(outDir, { recursive: true });
  writeFileSync(statusFile, `${JSON.stringify({ ...status, date: new Date().toISOString() }, null, 2)}\n`);
}

function skip(reason, log = '') {
  record({ ok: false, reason, how: EMCC_HELP, log: log.slice(-4000) });
  console.warn(`[@moelab/kernels-wasm] WebAssembly build skipped: ${reason}\n[@moelab/kernels-wasm] ${EMCC_HELP}`);
  process.exit(0);
}

if (process.env.MOELAB_SKIP_WASM === '1') skip('MOELAB_SKIP_WASM=1 was set');
if (!existsSync(join(sharedDir, 'gemm.cc'))) {
  // A published copy: the .wasm came with the package, there is nothing to rebuild from.
  process.exit(0);
}

const built = outputs.map((f) => join(outDir, f));
if (!force && built.every((f) => existsSync(f))) {
  const oldest = Math.min(...built.map((f) => statSync(f).mtimeMs));
  const inputs = [...sources, ...readdirSync(sharedDir).map((f) => join(sharedDir, f)), fileURLToPath(import.meta.url)];
  if (inputs.every((f) => statSync(f).mtimeMs <= oldest)) process.exit(0);
}

const emcc = process.env.EMCC || 'emcc';
// Debian's emscripten runs its JavaScript tools with the `node` on PATH and expects Debian's
// node-acorn, which only Debian's own node finds by default: point every node at it.
const env = { ...process.env };
if (existsSync('/usr/share/nodejs/acorn')) env.NODE_PATH = ['/usr/share/nodejs', env.NODE_PATH].filter(Boolean).join(':');
const probe = spawnSync(emcc, ['--version'], { encoding: 'utf8', env });
if (probe.error || probe.status !== 0) skip(`${emcc} was not found or does not run (${probe.error?.message ?? probe.stderr.trim().split('\n')[0]})`);

const flags = [
  '-O3',
  '-msimd128',
  '-std=gnu++17',
  `-I${sharedDir}`,
  // The module: an ES module factory; the memory grows on demand up to the wasm32 limit, and a
  // failed malloc returns null (the JS side turns it into an error naming the tensor) instead of aborting.
  '-sMODULARIZE=1',
  '-sEXPORT_ES6=1',
  '-sEXPORT_NAME=createMoelabKernels',
  // Loaded with the binary in hand (src/module.ts reads or fetches it), so no Node path is needed.
  '-sENVIRONMENT=web,worker',
  '-sALLOW_MEMORY_GROWTH=1',
  '-sMAXIMUM_MEMORY=4GB',
  '-sINITIAL_MEMORY=32MB',
  '-sABORTING_MALLOC=0',
  '-sEXPORTED_FUNCTIONS=_malloc,_free',
  '-sEXPORTED_RUNTIME_METHODS=stackSave,stackRestore,UTF8ToString',
];

mkdirSync(outDir, { recursive: true });
const tmp = mkdtempSync(join(outDir, '.tmp-'));
try {
  const started = Date.now();
  const r = spawnSync(emcc, [...flags, ...sources, '-o', join(tmp, 'moelab-kernels.mjs')], { encoding: 'utf8', env });
  const log = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
  if (r.error || r.status !== 0 || !outputs.every((f) => existsSync(join(tmp, f)))) {
    const first = log.split('\n').find((l) => /error/i.test(l)) ?? `exit ${r.status}`;
    rmSync(tmp, { recursive: true, force: true });
    skip(`emcc failed: ${first.trim()}`, log);
  }
  // Each file replaced by a rename: a reader never sees a half-written module.
  for (const f of outputs) renameSync(join(tmp, f), join(outDir, f));
  const version = probe.stdout
    .split('\n')[0]
    .replace(/^emcc \([^)]*\)\s*/, '')
    .replace(/\s*\(\)$/, '')
    .trim();
  record({ ok: true, emcc: version, flags, seconds: Math.round((Date.now() - started) / 1000) });
  console.log(`[@moelab/kernels-wasm] built build/moelab-kernels.wasm (${statSync(join(outDir, 'moelab-kernels.wasm')).size} bytes, emcc ${version})`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
