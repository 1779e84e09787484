// The packages as a user gets them: pack every publishable package (`pnpm pack`), install the tarballs
// into a fresh project with npm and with pnpm (from the local caches: --prefer-offline; the moelab
// packages come only from the tarballs), type-check and run a TypeScript consumer there
// (scripts/consumer/app.ts: a third-party router plugin, five training steps on moelab-cpu, a checkpoint
// saved and reloaded), and bundle a browser-style import of core + routers for the browser platform,
// failing on any Node built-in. Exits 1 with the reason on any failure; skips (exit 0, reason printed)
// only when a package manager is missing or the registry cannot be reached for what the caches lack.
//   node scripts/consumer-test.mjs [--keep] [--only npm|pnpm]
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
const here = join(root, 'scripts', 'consumer');
const args = process.argv.slice(2);
const keep = args.includes('--keep');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const tag = '[consumer test]';
const t0 = Date.now();
const log = (msg) => console.log(`${tag} ${msg} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);

class Skip extends Error {}

function run(cmd, cmdArgs, cwd, what, env = {}) {
  const r = spawnSync(cmd, cmdArgs, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 64 * 2 ** 20 });
  if (r.error?.code === 'ENOENT') throw new Skip(`${cmd} is not installed`);
  if (r.status !== 0) {
    const out = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
    if (/ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ERR_PNPM_NO_OFFLINE|ENETUNREACH|getaddrinfo/.test(out))
      throw new Skip(`${what}: the registry cannot be reached for packages the local cache lacks (${out.trim().split('\n').filter(Boolean).at(-1)})`);
    throw new Error(`${what} failed (${cmd} ${cmdArgs.join(' ')}, exit ${r.status}):\n${out.trim().split('\n').slice(-25).join('\n')}`);
  }
  return r.stdout;
}

/** Every publishable workspace package (packages/*, not private). */
function publishable() {
  return readdirSync(join(root, 'packages'))
    .map((dir) => join(root, 'packages', dir))
    .filter((dir) => existsSync(join(dir, 'package.json')))
    .map((dir) => ({ dir, pkg: JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) }))
    .filter(({ pkg }) => !pkg.private);
}

function pack(work) {
  const out = join(work, 'tarballs');
  mkdirSync(out);
  const tarballs = {};
  for (const { dir, pkg } of publishable()) {
    if (!existsSync(join(dir, 'dist', 'index.js'))) throw new Error(`${pkg.name} is not built (${dir}/dist/index.js is missing): run \`pnpm build\` first`);
    const before = new Set(readdirSync(out));
    run('pnpm', ['pack', '--pack-destination', out], dir, `packing ${pkg.name}`);
    const made = readdirSync(out).filter((f) => !before.has(f));
    if (made.length !== 1) throw new Error(`packing ${pkg.name} made ${made.length} tarballs in ${out}`);
    const file = join(out, made[0]);
    const listing = run('tar', ['-tzf', file], out, `listing ${made[0]}`).split('\n');
    for (const need of ['package/package.json', 'package/dist/index.js', 'package/dist/index.d.ts'])
      if (!listing.includes(need)) throw new Error(`${made[0]} lacks ${need.slice('package/'.length)}`);
    const packed = JSON.parse(run('tar', ['-xzOf', file, 'package/package.json'], out, `reading ${made[0]}`));
    const deps = { ...packed.dependencies, ...packed.peerDependencies };
    for (const [name, spec] of Object.entries(deps))
      if (String(spec).startsWith('workspace:')) throw new Error(`${made[0]}: dependency ${name} is still "${spec}"`);
    tarballs[pkg.name] = file;
  }
  return tarballs;
}

function versionIn(dir, name) {
  return JSON.parse(readFileSync(createRequire(join(dir, 'package.json')).resolve(`${name}/package.json`), 'utf8')).version;
}

function makeProject(work, pm, tarballs) {
  const dir = join(work, pm);
  mkdirSync(dir);
  const files = Object.fromEntries(Object.entries(tarballs).map(([name, file]) => [name, `file:../tarballs/${basename(file)}`]));
  const pkg = {
    name: `moelab-consumer-${pm}`,
    private: true,
    type: 'module',
    dependencies: {
      ...files,
      '@tensorflow/tfjs': versionIn(join(root, 'packages', 'core'), '@tensorflow/tfjs'),
    },
    devDependencies: {
      typescript: versionIn(root, 'typescript'),
      '@types/node': versionIn(root, '@types/node'),
    },
  };
  // The tarballs depend on each other by version (0.1.0, not published): point those at the files.
  if (pm === 'npm') pkg.overrides = Object.fromEntries(Object.keys(files).map((name) => [name, `$${name}`]));
  // pnpm 10 runs a dependency's build script only when allowed: by name, as a consumer installing from the
  // registry writes it, and, for a local tarball (not a semver version), by its dependency path.
  else pkg.pnpm = { overrides: files, onlyBuiltDependencies: ['@moelab/kernels-cpu', `@moelab/kernels-cpu@${files['@moelab/kernels-cpu']}`] };
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  for (const f of ['app.ts', 'browser.ts', 'tsconfig.json']) copyFileSync(join(here, f), join(dir, f));
  return dir;
}

function install(dir, pm) {
  if (pm === 'npm') run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], dir, 'npm install');
  // Outside any workspace; the store is the one `pnpm install` filled for this repository.
  else run('pnpm', ['install', '--prefer-offline', '--config.confirmModulesPurge=false', '--reporter=append-only'], dir, 'pnpm install', { CI: '1' });
}

function typecheckAndRun(dir, pm) {
  const tsc = join(dir, 'node_modules', 'typescript', 'bin', 'tsc');
  run(process.execPath, [tsc, '--noEmit', '-p', '.'], dir, `${pm}: tsc --noEmit`);
  run(process.execPath, [tsc, '--noCheck', '-p', '.'], dir, `${pm}: tsc (emit)`);
  const out = run(process.execPath, ['build/app.js'], dir, `${pm}: the consumer program`).trim().split('\n').at(-1);
  let r;
  try {
    r = JSON.parse(out);
  } catch {
    throw new Error(`${pm}: the consumer program printed no result line (got: ${out})`);
  }
  const problems = [];
  if (r.backend !== 'moelab-cpu' || r.tfBackend !== 'moelab-cpu') problems.push(`trained on ${r.backend}/${r.tfBackend}, not moelab-cpu`);
  if (r.losses?.length !== 5 || !r.losses.every(Number.isFinite)) problems.push(`losses ${JSON.stringify(r.losses)}`);
  if (!r.gateMoved) problems.push('the third-party router got no gradient (its gate did not change)');
  if (!(r.maxDiff === 0)) problems.push(`the reloaded checkpoint's logits differ by ${r.maxDiff}`);
  if (problems.length) throw new Error(`${pm}: ${problems.join('; ')}`);
  return r;
}

/** Bundle browser.ts for the browser platform; @tensorflow/* stays external (tfjs is the host's). */
async function bundleForBrowser(dir) {
  const { rolldown } = await import('rolldown');
  const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
  const nodeImports = [];
  const bundle = await rolldown({
    input: join(dir, 'browser.ts'),
    cwd: dir,
    platform: 'browser',
    external: (id) => /^@tensorflow\//.test(id),
    plugins: [
      {
        name: 'no-node-builtins',
        resolveId(id, importer) {
          if (builtins.has(id) || id.startsWith('node:')) {
            nodeImports.push(`${id} (imported by ${importer})`);
            return { id, external: true };
          }
          return null;
        },
      },
    ],
    logLevel: 'silent',
  });
  const { output } = await bundle.generate({ format: 'esm' });
  await bundle.close();
  if (nodeImports.length) throw new Error(`the browser bundle of core + routers imports Node built-ins: ${nodeImports.join(', ')}`);
  const code = output.map((o) => o.code ?? '').join('\n');
  if (/\brequire\(|from ["']node:/.test(code)) throw new Error('the browser bundle of core + routers still holds a require() or a node: import');
  if (!code.includes('softmax-topk')) throw new Error('the browser bundle does not hold the routers plugin');
  return code.length;
}

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'moelab-consumer-'));
  try {
    const tarballs = pack(work);
    log(`packed ${Object.keys(tarballs).length} packages: ${Object.keys(tarballs).join(', ')}`);
    for (const pm of ['npm', 'pnpm']) {
      if (only && only !== pm) continue;
      const dir = makeProject(work, pm, tarballs);
      install(dir, pm);
      log(`${pm}: installed the tarballs into ${dir}`);
      const r = typecheckAndRun(dir, pm);
      log(
        `${pm}: tsc --noEmit clean; trained 5 steps on ${r.backend} (loss ${r.losses[0].toFixed(3)} -> ${r.losses[4].toFixed(3)}), checkpoint reloaded with identical logits`,
      );
      if (pm === 'pnpm' || only === 'npm') log(`browser bundle of core + routers: ${(await bundleForBrowser(dir)) >> 10} KiB, no Node built-in`);
    }
    log('passed');
  } finally {
    if (keep) console.log(`${tag} kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  if (e instanceof Skip) {
    console.log(`${tag} skipped: ${e.message}`);
    process.exit(0);
  }
  console.error(`${tag} FAILED: ${e.message}`);
  process.exit(1);
});
