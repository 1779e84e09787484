// Builds moelab-cuda's two addons and never fails the install:
//   build/moelab_cuda_emu.node  the kernels compiled as host C++ by g++ and run on the CPU emulation
//                               of the launch grid (backend `moelab-cuda-emu`, what the tests run);
//   build/moelab_cuda.node      the kernels compiled by nvcc for sm_80 and sm_90 (+ PTX for newer
//                               GPUs), cudart linked statically: only the NVIDIA driver is needed at
//                               run time (backend `moelab-cuda`). Built only where nvcc is found.
// What was built, or why not, goes to build/moelab-cuda-build.json (read by src/native.ts).
//
//   node scripts/build-native.mjs               build both (the install script)
//   node scripts/build-native.mjs --if-missing  only what is absent or older than its sources
//   node scripts/build-native.mjs --force       rebuild both
// Env: MOELAB_SKIP_NATIVE=1 builds nothing; MOELAB_CUDA_SKIP_DEVICE=1 skips the nvcc build;
// CUDA_HOME / CUDA_PATH or NVCC point at the toolkit; CXX picks the host compiler (default g++);
// MOELAB_CUDA_SKIP_EMULATION=1 skips the emulation build; MOELAB_NODE_ADDON_API names node-addon-api's
// include directory (scripts/device-check.sh, where there is no node_modules).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = join(pkgDir, 'build');
const srcDir = join(pkgDir, 'src', 'native');
const statusFile = join(buildDir, 'moelab-cuda-build.json');
const args = new Set(process.argv.slice(2));
const TAG = '[@moelab/kernels-cuda]';

export const ARCHS = ['80', '90'];
const EMU = join(buildDir, 'moelab_cuda_emu.node');
const DEVICE = join(buildDir, 'moelab_cuda.node');

function previous() {
  try {
    return JSON.parse(readFileSync(statusFile, 'utf8'));
  } catch {
    return {};
  }
}

function record(status) {
  mkdirSync(buildDir, { recursive: true });
  const tmp = `${statusFile}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify({ ...previous(), ...status, node: process.version, date: new Date().toISOString() }, null, 2)}\n`);
  renameSync(tmp, statusFile);
}

function upToDate(file) {
  if (!existsSync(file)) return false;
  const built = statSync(file).mtimeMs;
  const sources = [...readdirSync(srcDir).map((f) => join(srcDir, f)), fileURLToPath(import.meta.url)];
  return sources.every((f) => statSync(f).mtimeMs <= built);
}

function run(cmd, argv) {
  const r = spawnSync(cmd, argv, { cwd: pkgDir, encoding: 'utf8', env: process.env });
  const log = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
  if (r.error) return { ok: false, reason: `${cmd} could not be run (${r.error.message})`, log };
  if (r.status !== 0) {
    const line = log.split('\n').find((l) => /error/i.test(l)) ?? `exit ${r.status}`;
    return { ok: false, reason: `${cmd} failed: ${line.trim()}`, log };
  }
  return { ok: true, log };
}

// node-gyp is not involved: a Node-API addon on Linux is a shared object that resolves node's
// symbols at load time, so the compiler needs only node's headers and node-addon-api's (its
// include_dir is relative to the working directory, which need not be this package's).
function headerFlags() {
  const require = createRequire(import.meta.url);
  let addonApi = process.env.MOELAB_NODE_ADDON_API;
  if (!addonApi) {
    try {
      addonApi = require('node-addon-api').include_dir;
    } catch {
      return { error: 'node-addon-api is not installed' };
    }
  }
  const candidates = [process.env.npm_config_nodedir, resolve(dirname(process.execPath), '..')].filter(Boolean);
  const nodeInclude = candidates.map((d) => join(d, 'include', 'node')).find((d) => existsSync(join(d, 'node_api.h')));
  if (!nodeInclude) return { error: `node's headers (include/node/node_api.h) were not found next to ${process.execPath}` };
  return { flags: [`-I${nodeInclude}`, `-I${resolve(addonApi)}`, '-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS'] };
}

function findNvcc() {
  if (process.env.NVCC && existsSync(process.env.NVCC)) return process.env.NVCC;
  const dirs = [
    ...['CUDA_HOME', 'CUDA_PATH'].filter((v) => process.env[v]).map((v) => join(process.env[v], 'bin')),
    ...(process.env.PATH ?? '').split(delimiter),
    '/usr/local/cuda/bin',
  ];
  return dirs.map((d) => join(d, 'nvcc')).find((f) => f && existsSync(f)) ?? null;
}

const cxx = process.env.CXX || 'g++';
const common = ['-std=gnu++17', '-O2', '-fPIC', '-fexceptions', '-Wall'];

function buildEmulation(headers) {
  const out = `${EMU}.${process.pid}.tmp`;
  const r = run(cxx, [
    ...common,
    '-shared',
    '-DMLC_EMULATE',
    ...headers,
    join(srcDir, 'addon.cc'),
    join(srcDir, 'pool.cc'),
    join(srcDir, 'emu.cc'),
    '-x',
    'c++',
    join(srcDir, 'kernels.cu'),
    '-x',
    'none',
    '-o',
    out,
    '-pthread',
  ]);
  if (r.ok) renameSync(out, EMU);
  else rmSync(out, { force: true });
  return r;
}

function buildDevice(headers, nvcc) {
  // /usr/local/bin/nvcc may be a link or a wrapper script: look for the toolkit next to the real
  // binary, then in $CUDA_HOME, $CUDA_PATH and /usr/local/cuda.
  const roots = [resolve(dirname(realpathSync(nvcc)), '..'), process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter(Boolean);
  const libDirs = roots.flatMap((root) => ['lib64', 'lib', 'targets/x86_64-linux/lib', 'targets/sbsa-linux/lib'].map((d) => ({ root, lib: join(root, d) })));
  const found = libDirs.find((d) => existsSync(join(d.lib, 'libcudart_static.a')));
  if (!found) return { ok: false, reason: `libcudart_static.a was not found under ${roots.join(', ')}`, log: '' };
  const cudaRoot = found.root;
  const libDir = found.lib;
  const obj = join(buildDir, `kernels-device.${process.pid}.o`);
  const gencode = ARCHS.flatMap((a) => ['-gencode', `arch=compute_${a},code=sm_${a}`]);
  const last = ARCHS[ARCHS.length - 1];
  const r1 = run(nvcc, [
    '-c',
    '-O3',
    '-std=c++17',
    '-Xcompiler',
    '-fPIC',
    ...gencode,
    '-gencode',
    `arch=compute_${last},code=compute_${last}`,
    join(srcDir, 'kernels.cu'),
    '-o',
    obj,
  ]);
  if (!r1.ok) {
    rmSync(obj, { force: true });
    return r1;
  }
  const out = `${DEVICE}.${process.pid}.tmp`;
  const r2 = run(cxx, [
    ...common,
    '-shared',
    `-I${join(cudaRoot, 'include')}`,
    ...headers,
    join(srcDir, 'addon.cc'),
    join(srcDir, 'pool.cc'),
    obj,
    '-o',
    out,
    `-L${libDir}`,
    '-l:libcudart_static.a',
    '-ldl',
    '-lrt',
    '-pthread',
  ]);
  rmSync(obj, { force: true });
  if (r2.ok) renameSync(out, DEVICE);
  else rmSync(out, { force: true });
  return r2;
}

function main() {
  const status = {};
  if (process.env.MOELAB_SKIP_NATIVE === '1') {
    record({
      emulation: { ok: false, reason: 'MOELAB_SKIP_NATIVE=1 was set at install time' },
      device: { ok: false, reason: 'MOELAB_SKIP_NATIVE=1 was set at install time' },
    });
    console.warn(`${TAG} native builds skipped (MOELAB_SKIP_NATIVE=1)`);
    return;
  }
  const ifMissing = args.has('--if-missing');
  // The compilers write their outputs into build/ (temp name, then rename): it must exist first.
  mkdirSync(buildDir, { recursive: true });
  const h = headerFlags();
  if (h.error) {
    record({ emulation: { ok: false, reason: h.error }, device: { ok: false, reason: h.error } });
    console.warn(`${TAG} native builds skipped: ${h.error}`);
    return;
  }
  if (process.env.MOELAB_CUDA_SKIP_EMULATION === '1') {
    if (!existsSync(EMU)) status.emulation = { ok: false, reason: 'MOELAB_CUDA_SKIP_EMULATION=1 was set at build time' };
  } else if (!(ifMissing && upToDate(EMU))) {
    const r = buildEmulation(h.flags);
    status.emulation = r.ok ? { ok: true, compiler: cxx } : { ok: false, reason: r.reason, log: r.log.slice(-4000) };
    console.log(r.ok ? `${TAG} emulation addon built (${cxx})` : `${TAG} emulation addon not built: ${r.reason}`);
  }
  const nvcc = process.env.MOELAB_CUDA_SKIP_DEVICE === '1' ? null : findNvcc();
  if (!nvcc) {
    const reason =
      process.env.MOELAB_CUDA_SKIP_DEVICE === '1'
        ? 'MOELAB_CUDA_SKIP_DEVICE=1 was set at build time'
        : 'nvcc was not found (PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin): install the CUDA toolkit (12.x or 13.x) and rebuild';
    if (!existsSync(DEVICE)) status.device = { ok: false, reason };
    if (!existsSync(DEVICE)) console.log(`${TAG} device addon not built: ${reason}`);
  } else if (!(ifMissing && upToDate(DEVICE))) {
    const r = buildDevice(h.flags, nvcc);
    status.device = r.ok ? { ok: true, nvcc, archs: ARCHS.map((a) => `sm_${a}`) } : { ok: false, reason: r.reason, log: r.log.slice(-4000) };
    console.log(r.ok ? `${TAG} device addon built (${nvcc}, sm_${ARCHS.join(', sm_')})` : `${TAG} device addon not built: ${r.reason}`);
  }
  if (Object.keys(status).length > 0) record(status);
}

main();
