import { describe, expect, it } from 'vitest';
import { installFailureMessage, missingAddonReason } from '../scripts/build-help.mjs';
import { loadNative } from './native.js';

describe('what a user is told when the native addon is missing', () => {
  it('install script blocked (no build record): how to approve it with pnpm and npm, rebuild, and the apt packages', () => {
    const m = missingAddonReason(undefined);
    expect(m).toMatch(/^the native addon was not built: its install script never ran: the package manager blocked it/);
    expect(m).toContain('`pnpm approve-builds` and select @moelab/kernels-cpu');
    expect(m).toContain('`onlyBuiltDependencies: ["@moelab/kernels-cpu"]` to pnpm-workspace.yaml');
    expect(m).toContain('then `pnpm rebuild @moelab/kernels-cpu`');
    expect(m).toContain('`npm approve-scripts @moelab/kernels-cpu`');
    expect(m).toContain('"allowScripts": { "@moelab/kernels-cpu": true }');
    expect(m).toContain('then `npm rebuild @moelab/kernels-cpu`');
    expect(m).toContain('apt-get install -y g++ make python3');
    expect(m).toContain('OpenBLAS is optional, for the fastest GEMM (apt-get install -y libopenblas-dev)');
    expect(m).not.toContain('\n');
  });

  it('build failed at install: the recorded reason, the toolchain, then the rebuild for pnpm and npm', () => {
    const m = missingAddonReason({ ok: false, reason: 'node-gyp failed (exit 1): g++: not found' });
    expect(m).toBe(
      'the native addon was not built: node-gyp failed (exit 1): g++: not found. The build needs a C++ compiler, make and Python 3 ' +
        '(Debian/Ubuntu: apt-get install -y g++ make python3); OpenBLAS is optional, for the fastest GEMM (apt-get install -y libopenblas-dev). ' +
        'Install what is missing, then run `pnpm rebuild @moelab/kernels-cpu` (npm: `npm rebuild @moelab/kernels-cpu`).',
    );
    expect(installFailureMessage('node-gyp is not installed')).toBe(
      '[@moelab/kernels-cpu] native build skipped: node-gyp is not installed\n' +
        '[@moelab/kernels-cpu] The build needs a C++ compiler, make and Python 3 (Debian/Ubuntu: apt-get install -y g++ make python3); ' +
        'OpenBLAS is optional, for the fastest GEMM (apt-get install -y libopenblas-dev). ' +
        'Install what is missing, then run `pnpm rebuild @moelab/kernels-cpu` (npm: `npm rebuild @moelab/kernels-cpu`).',
    );
  });

  it('built once, file gone since: rebuild', () => {
    expect(missingAddonReason({ ok: true })).toBe(
      'the native addon is missing although its build succeeded (was build/Release deleted?): run `pnpm rebuild @moelab/kernels-cpu` (npm: `npm rebuild @moelab/kernels-cpu`).',
    );
  });

  it('loadNative gives one of these reasons whenever the addon did not load', () => {
    const { addon, reason } = loadNative();
    if (addon) expect(reason).toBe('');
    else expect(reason).toMatch(/rebuild @moelab\/kernels-cpu/);
  });
});
