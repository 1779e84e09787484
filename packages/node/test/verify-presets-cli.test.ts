/**
 * `moelab verify` runs golden fixtures through @moelab/verify (a line per tensor, exit code 1 on a
 * failure, one-line errors for bad input); `moelab list preset` lists the typed preset table.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runCli, tmp } from './helpers.js';

const fixtures = fileURLToPath(new URL('../../../fixtures/', import.meta.url));

describe('moelab verify and moelab list preset', () => {
  it('verify passes a fixture of each system, a line per tensor', () => {
    const r = runCli(['verify', `${fixtures}moeut/switchhead_p3_dense_gated.json`, `${fixtures}peer/peer_p1.json`, `${fixtures}smore/smore_p1_switch.json`]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^PASS .*switchhead_p3_dense_gated.* \(switchhead, backend /m);
    expect(r.out).toMatch(/^ {2}ok {3}expected\.eval\.out +max err \S+ +\d+\.\d% of budget$/m);
    expect(r.out).toMatch(/^PASS .*smore_p1_switch.* \(smore_layer, backend /m);
    expect(r.out).toMatch(/^ {2}ok {3}grad_aux\.moe_gate\.default\.0\.keys +max err \S+ +\d+\.\d% of budget$/m);
    expect(r.out).toMatch(/^3 passed, 0 failed$/m);
    const j = JSON.parse(runCli(['verify', `${fixtures}peer/peer_p1.json`, '--json']).out);
    expect(j[0]).toMatchObject({ kind: 'peer', ok: true });
    expect(j[0].checks.length).toBe(35);
  });

  it('verify refuses bad input with one line naming the file', () => {
    const dir = tmp();
    writeFileSync(join(dir, 'odd.json'), '{"name":"odd","kind":"sigma-moe","tensors":{}}');
    copyFileSync(`${fixtures}moeut/sigma_moe_p1.safetensors`, join(dir, 'odd.safetensors'));
    writeFileSync(join(dir, 'alone.json'), '{"kind":"peer","tensors":{}}');
    const cases: [string[], RegExp][] = [
      [['verify'], /usage: moelab verify <fixture\.json>/],
      [['verify', join(dir, 'none.json')], /none\.json: no such file/],
      [['verify', join(dir, 'alone.json')], /alone\.json: its tensors file .*alone\.safetensors is missing/],
      [['verify', join(dir, 'odd.json')], /odd: \$\.kind: no runner for fixture kind "sigma-moe"\. Did you mean: sigma_moe\?/],
    ];
    for (const [args, re] of cases) {
      const r = runCli(args);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.err.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.err).toMatch(re);
    }
  });

  it('list preset shows the presets with their descriptions; --json includes spec and training config', () => {
    const r = runCli(['list', 'preset']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^preset:$/m);
    expect(r.out).toMatch(/^ {2}moe-tiny +Softmax top-2 MoE/m);
    const j = JSON.parse(runCli(['list', 'preset', 'moe*', '--json']).out);
    expect(j.map((p: { name: string }) => p.name)).toEqual(['moe-tiny', 'moeut-tiny', 'moeut-tiny-dense-compute', 'moeut-tiny-dense-params']);
    expect(j[0]).toMatchObject({ kind: 'preset', spec: { type: 'transformer-lm' }, train: { batchSize: 16 } });
    const all = runCli(['list']).out;
    expect(all).toMatch(/^router:$/m);
    expect(all.slice(all.indexOf('\npreset:\n'))).toMatch(/^ {2}dense-tiny +Dense baseline/m);
  });
});
