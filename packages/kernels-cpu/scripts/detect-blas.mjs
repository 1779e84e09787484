// Prints the BLAS to link (for binding.gyp): "openblas" when a tiny program calling cblas_sgemm
// compiles and links against -lopenblas, else "none". MOELAB_BLAS=none forces the builtin GEMM.
// Only the answer goes to stdout: gyp substitutes it verbatim.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function detect() {
  const forced = (process.env.MOELAB_BLAS ?? '').toLowerCase();
  if (forced === 'none' || forced === 'builtin') return 'none';
  const dir = mkdtempSync(join(tmpdir(), 'moelab-blas-'));
  try {
    const src = join(dir, 'probe.c');
    writeFileSync(
      src,
      [
        '#include <cblas.h>',
        'void openblas_set_num_threads(int);',
        'int main(void) {',
        '  float a[1] = {2}, b[1] = {3}, c[1] = {0};',
        '  openblas_set_num_threads(1);',
        '  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, 1, 1, 1.f, a, 1, b, 1, 0.f, c, 1);',
        '  return c[0] == 6.f ? 0 : 1;',
        '}',
        '',
      ].join('\n'),
    );
    const cc = process.env.CC || 'cc';
    const r = spawnSync(cc, [src, '-o', join(dir, 'probe'), '-lopenblas'], { stdio: 'ignore' });
    if (r.status !== 0) return 'none';
    const run = spawnSync(join(dir, 'probe'), [], { stdio: 'ignore' });
    return run.status === 0 ? 'openblas' : 'none';
  } catch {
    return 'none';
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

process.stdout.write(detect());
