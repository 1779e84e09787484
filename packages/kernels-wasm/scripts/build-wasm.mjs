// Compiles kernels-cpu's C++ kernels (../kernels-cpu/src/native, shared, not copied) and
// native/exports.cc to WebAssembly with Emscripten, twice: build/moelab-kernels.{wasm,mjs}
// (single-threaded) and build/moelab-kernels-threads.{wasm,mjs,worker.cjs,worker-source.mjs} (pthreads:
// kernels-cpu's thread pool on Web Workers / Node worker threads sharing the module's memory, used
// where SharedArrayBuffer is, i.e. Node and cross-origin isolated pages). The published package
// ships both (an npm user needs no compiler). Run by `pnpm build`; never fails it: without emcc the build is skipped with the reason
// printed and recorded in build/moelab-wasm-build.json, and the backend reports it as unavailable.
//
//   node scripts/build-wasm.mjs              build when missing or older than a source
//   node scripts/build-wasm.mjs --force      rebuild
// Env: EMCC=<path> picks the compiler; MOELAB_SKIP_WASM=1 skips the build.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const sharedDir = resolve(pkgDir, '..', 'kernels-cpu', 'src', 'native');
const outDir = join(pkgDir, 'build');
const statusFile = join(outDir, 'moelab-wasm-build.json');
const force = process.argv.includes('--force');

// The kernels (every translation unit of the Node addon but its Node-API bindings, so that a kernel
// file kernels-cpu adds is compiled here too) and the exports.
const SHARED = existsSync(sharedDir) ? readdirSync(sharedDir).filter((f) => f.endsWith('.cc') && f !== 'addon.cc') : [];
const sources = [join(pkgDir, 'native', 'exports.cc'), ...SHARED.map((f) => join(sharedDir, f))];

export const EMCC_HELP = 'Install Emscripten (Debian/Ubuntu: apt-get install -y emscripten), then run `pnpm --filter @moelab/kernels-wasm build`.';

const COMMON = [
  '-O3',
  '-msimd128',
  // memcpy / memset as memory.copy / memory.fill: without it Emscripten calls out to JavaScript for
  // every copy of 512 bytes or more (each row the fused MoE ops gather).
  '-mbulk-memory',
  '-std=gnu++17',
  `-I${sharedDir}`,
  // The module: an ES module factory; the memory grows on demand up to the wasm32 limit, and a
  // failed malloc returns null (the JS side turns it into an error naming the tensor) instead of aborting.
  '-sMODULARIZE=1',
  '-sEXPORT_ES6=1',
  '-sEXPORT_NAME=createMoelabKernels',
  '-sALLOW_MEMORY_GROWTH=1',
  '-sMAXIMUM_MEMORY=4GB',
  '-sINITIAL_MEMORY=32MB',
  '-sABORTING_MALLOC=0',
  '-sEXPORTED_FUNCTIONS=_malloc,_free',
  '-sEXPORTED_RUNTIME_METHODS=stackSave,stackRestore,UTF8ToString',
];

const VARIANTS = [
  {
    name: 'moelab-kernels',
    files: ['moelab-kernels.mjs', 'moelab-kernels.wasm'],
    // Loaded with the binary in hand (src/module.ts reads or fetches it), so no Node path is needed.
    flags: [...COMMON, '-sENVIRONMENT=web,worker'],
  },
  {
    name: 'moelab-kernels-threads',
    files: ['moelab-kernels-threads.mjs', 'moelab-kernels-threads.wasm', 'moelab-kernels-threads.worker.cjs', 'moelab-kernels-threads.worker-source.mjs'],
    flags: [
      ...COMMON,
      '-pthread',
      // Node runs the threads on worker_threads, the browser on Web Workers.
      '-sENVIRONMENT=web,worker,node',
      // The Workers are started with the module (src/module.ts passes poolSize = threads - 1), so
      // the kernels' pool creates its threads synchronously.
      '-sPTHREAD_POOL_SIZE=Module["poolSize"]',
      // Leave the host's process alone: no exit or rejection handlers installed in Node.
      '-sNODEJS_CATCH_EXIT=0',
      '-sNODEJS_CATCH_REJECTION=0',
    ],
    patch: patchThreaded,
  },
];

/**
 * Emscripten 3.1's ES-module glue still calls CommonJS `require` and `__dirname` on its Node path,
 * which an ES module does not have: they become the `nodeRequire` that src/module.ts passes in
 * (and, in a thread, the one its worker script has). The worker script is CommonJS: Node gets it
 * as `.cjs` (the package is `"type": "module"`); browsers get its text from an ES module
 * (`.worker-source.mjs`) and start it from a Blob URL, so that no bundler or dev server rewrites it.
 */
function patchThreaded(dir) {
  const glueFile = join(dir, 'moelab-kernels-threads.mjs');
  let glue = readFileSync(glueFile, 'utf8');
  const requires = glue.split('require("').length - 1;
  glue = glue.replaceAll('require("', 'Module["nodeRequire"]("').replaceAll('__dirname', '""');
  if (requires === 0 || /(^|[^.\w"])require\(/.test(glue)) throw new Error('unexpected Emscripten glue: its Node require calls were not found');
  writeFileSync(glueFile, glue);
  const workerFile = join(dir, 'moelab-kernels-threads.worker.js');
  let worker = readFileSync(workerFile, 'utf8');
  const decl = 'var Module={};';
  if (!worker.includes(decl)) throw new Error('unexpected Emscripten worker script');
  worker = worker.replace(decl, `${decl}if(typeof require=="function")Module["nodeRequire"]=require;`);
  writeFileSync(join(dir, 'moelab-kernels-threads.worker.cjs'), worker);
  writeFileSync(join(dir, 'moelab-kernels-threads.worker-source.mjs'), `export default ${JSON.stringify(worker)};\n`);
}

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

const built = VARIANTS.flatMap((v) => v.files.map((f) => join(outDir, f)));
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
const version = probe.stdout
  .split('\n')[0]
  .replace(/^emcc \([^)]*\)\s*/, '')
  .replace(/\s*\(\)$/, '')
  .trim();

/** Builds one variant into a temporary folder; resolves its status (never rejects). */
function buildVariant(v) {
  const tmp = mkdtempSync(join(outDir, '.tmp-'));
  const started = Date.now();
  return new Promise((done) => {
    const child = spawn(emcc, [...v.flags, ...sources, '-o', join(tmp, `${v.name}.mjs`)], { env });
    let log = '';
    child.stdout.on('data', (d) => (log += d));
    child.stderr.on('data', (d) => (log += d));
    child.on('error', (e) => (log += `\n${e.message}`));
    child.on('close', (code) => {
      try {
        if (code === 0) v.patch?.(tmp);
        if (code !== 0 || !v.files.every((f) => existsSync(join(tmp, f)))) {
          const first = log.split('\n').find((l) => /error/i.test(l)) ?? `exit ${code}`;
          done({ ok: false, reason: `emcc failed: ${first.trim()}`, log: log.slice(-4000) });
          return;
        }
        // Each file replaced by a rename: a reader never sees a half-written module.
        for (const f of v.files) renameSync(join(tmp, f), join(outDir, f));
        // Recorded without this machine's paths (the record ships with the package).
        const flags = v.flags.map((f) => f.replace(sharedDir, '../kernels-cpu/src/native'));
        done({ ok: true, flags, seconds: Math.round((Date.now() - started) / 1000) });
      } catch (e) {
        done({ ok: false, reason: `${v.name}: ${e.message}`, log: log.slice(-4000) });
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    });
  });
}

mkdirSync(outDir, { recursive: true });
const [single, threaded] = await Promise.all(VARIANTS.map(buildVariant));
if (!single.ok) skip(single.reason, single.log);
record({ ok: true, emcc: version, ...single, threads: threaded });
const size = (f) => statSync(join(outDir, f)).size;
console.log(`[@moelab/kernels-wasm] built build/moelab-kernels.wasm (${size('moelab-kernels.wasm')} bytes, emcc ${version})`);
if (threaded.ok) console.log(`[@moelab/kernels-wasm] built build/moelab-kernels-threads.wasm (${size('moelab-kernels-threads.wasm')} bytes, pthreads)`);
else console.warn(`[@moelab/kernels-wasm] threaded build skipped (${threaded.reason}); the single-threaded module is used everywhere`);
