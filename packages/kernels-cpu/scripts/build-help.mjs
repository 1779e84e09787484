// What a user does to get the native addon, in one place: printed by build-native.mjs at install
// when the build fails, and returned by loadNative() (src/native.ts) as the reason `moelab-cpu` is
// unavailable, which `--backend auto` prints among the backends it skipped.

/** The package whose install script builds the addon. */
export const PACKAGE = '@moelab/kernels-cpu';

/** The system packages the build needs (Debian/Ubuntu names). */
export const TOOLCHAIN =
  'The build needs a C++ compiler, make and Python 3 (Debian/Ubuntu: apt-get install -y g++ make python3); ' +
  'OpenBLAS is optional, for the fastest GEMM (apt-get install -y libopenblas-dev).';

/** Rebuild commands per package manager. */
export const REBUILD = `then run \`pnpm rebuild ${PACKAGE}\` (npm: \`npm rebuild ${PACKAGE}\`)`;

/**
 * The build script never ran: pnpm 10 runs no dependency build script until it is approved, npm 12
 * (announced by npm 11.16's `allowScripts` warnings) likewise, and `--ignore-scripts` skips it anywhere.
 */
export const SCRIPT_BLOCKED =
  `its install script never ran: the package manager blocked it (pnpm 10 and npm 12 run a dependency's build script only once you approve it; ` +
  `--ignore-scripts skips it everywhere). Approve it, then rebuild: ` +
  `pnpm: \`pnpm approve-builds\` and select ${PACKAGE}, or add \`onlyBuiltDependencies: ["${PACKAGE}"]\` to pnpm-workspace.yaml, ` +
  `then \`pnpm rebuild ${PACKAGE}\`; ` +
  `npm: \`npm approve-scripts ${PACKAGE}\` (it writes "allowScripts": { "${PACKAGE}": true } to package.json), then \`npm rebuild ${PACKAGE}\`.`;

/** What to do when the build ran and failed (a compiler, make, Python or node-gyp missing). */
export function buildFailedHelp() {
  return `${TOOLCHAIN} Install what is missing, ${REBUILD}.`;
}

/** What to do when the install script never ran. */
export function scriptBlockedHelp() {
  return `${SCRIPT_BLOCKED} ${TOOLCHAIN}`;
}

/** The two lines build-native.mjs prints when the build fails (the install itself still succeeds). */
export function installFailureMessage(reason) {
  return `[${PACKAGE}] native build skipped: ${reason}\n[${PACKAGE}] ${buildFailedHelp()}`;
}

/**
 * Why the addon file is missing, from the install's build record (build/moelab-build.json, written by
 * build-native.mjs; absent when the install script never ran), and what to do about it.
 */
export function missingAddonReason(record) {
  if (!record) return `the native addon was not built: ${scriptBlockedHelp()}`;
  if (record.ok === false && record.reason) return `the native addon was not built: ${record.reason}. ${buildFailedHelp()}`;
  return `the native addon is missing although its build succeeded (was build/Release deleted?): ${REBUILD.replace(/^then run/, 'run')}.`;
}
