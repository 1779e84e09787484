/** `moelab verify`: run golden fixtures (JSON + safetensors beside it) and print a line per tensor. */
import { existsSync, readFileSync } from 'node:fs';
import { MoelabError, type Registry, tf } from '@moelab/core';
import { parseFixture, type VerifyReport, verifyFixture } from '@moelab/verify';

export function verifyFiles(paths: string[], registry: Registry, json: boolean): number {
  if (paths.length === 0) throw new MoelabError('usage: moelab verify <fixture.json> [more.json …]');
  let failed = 0;
  const reports: VerifyReport[] = [];
  for (const p of paths) {
    if (!existsSync(p)) throw new MoelabError('no such file', p);
    const st = p.replace(/\.json$/, '.safetensors');
    if (st === p || !existsSync(st)) throw new MoelabError(`its tensors file ${st === p ? '<name>.safetensors' : st} is missing`, p);
    const fx = parseFixture(readFileSync(p, 'utf8'), new Uint8Array(readFileSync(st)), p);
    tf.engine().startScope();
    let report: VerifyReport;
    try {
      report = verifyFixture(fx, registry);
    } finally {
      tf.engine().endScope();
    }
    reports.push(report);
    if (!report.ok) failed++;
    if (json) continue;
    process.stdout.write(`${report.ok ? 'PASS' : 'FAIL'} ${fx.doc.name} (${fx.doc.kind}, backend ${tf.getBackend()})\n`);
    for (const c of report.checks) {
      const used = c.missing ? 'missing' : Number.isFinite(c.budgetUsed) ? `${(100 * c.budgetUsed).toFixed(1)}% of budget` : 'mismatch';
      process.stdout.write(
        `  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name.padEnd(44)} max err ${Number.isFinite(c.maxError) ? c.maxError.toExponential(2) : String(c.maxError)}  ${used}${c.note ? ` (${c.note})` : ''}\n`,
      );
    }
  }
  if (json) process.stdout.write(`${JSON.stringify(reports, null, 2)}\n`);
  else process.stdout.write(`${paths.length - failed} passed, ${failed} failed\n`);
  return failed ? 1 : 0;
}
