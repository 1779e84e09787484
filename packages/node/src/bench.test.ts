import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tf } from '@moelab/core';
import { afterAll, describe, expect, it } from 'vitest';
import { chooseBackend } from './backends.js';
import { benchJsonPath, GENERATE_WORKLOAD, generateRowName, runBenchBackends } from './bench.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'moelab-bench-'));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await tf.setBackend('cpu');
});

// Whether the native backend can run here (the rows are far too slow on the plain cpu backend).
const native = await chooseBackend('moelab-cpu')
  .then(() => true)
  .catch(() => false);
await tf.setBackend('cpu');

interface JsonRow {
  group: string;
  name: string;
  gflop_fwd: number;
  gflop_fwdbwd: number;
  fwd_ms: number | null;
  fwdbwd_ms: number | null;
  gflops_fwd: number | null;
  gflops_fwdbwd: number | null;
}

describe('moelab bench', () => {
  it('names one JSON per backend the way torch_moe_bench.py --compare takes them', () => {
    expect(benchJsonPath('out.json', 'moelab-cpu', true)).toBe('out.json');
    expect(benchJsonPath('out.json', 'wasm', false)).toBe('out.wasm.json');
    expect(benchJsonPath('results', 'cpu', false)).toBe('results.cpu.json');
  });

  it('skips a backend it cannot start, with the reason, and fails when none can run', async () => {
    const lines: string[] = [];
    await expect(runBenchBackends({ backends: 'no-such-backend', only: ['a dense'], quick: true, log: (l) => lines.push(l) })).rejects.toThrow(
      /^--backend: no backend could run the bench: no-such-backend: /,
    );
    expect(lines.join('\n')).toMatch(/# backend no-such-backend skipped: /);
  });

  it.skipIf(!native)('writes the anchor’s row names, FLOP convention and fields (moelab-cpu, one layer row)', async () => {
    const json = path.join(dir, 'bench.json');
    const lines: string[] = [];
    const { ran } = await runBenchBackends({ backends: 'moelab-cpu', only: ['a dense'], quick: true, json, log: (l) => lines.push(l) });
    expect(ran).toEqual(['moelab-cpu']);
    expect(existsSync(json)).toBe(true);
    const out = JSON.parse(readFileSync(json, 'utf8')) as { environment: { backend: string }; peak_sgemm_gflops: number; rows: JsonRow[] };
    expect(out.environment.backend).toBe('moelab-cpu');
    // The anchor's names: peak sgemm rows always run, plus the selected layer row.
    expect(out.rows.map((r) => r.name)).toEqual(['sgemm 2048^3', 'sgemm 1024^3', 'a dense FFN relu']);
    const ffn = out.rows.find((r) => r.name === 'a dense FFN relu')!;
    expect(ffn.group).toBe('ffn');
    // 2mnk per matrix multiply: T=4096 tokens, d=256, d_ff=1024, two GEMMs; training = 3 x forward.
    expect(ffn.gflop_fwd).toBeCloseTo((2 * 2 * 4096 * 256 * 1024) / 1e9, 6);
    expect(ffn.gflop_fwdbwd).toBeCloseTo(3 * ffn.gflop_fwd, 6);
    expect(ffn.fwd_ms!).toBeGreaterThan(0);
    expect(ffn.fwdbwd_ms!).toBeGreaterThan(ffn.fwd_ms!);
    expect(ffn.gflops_fwd!).toBeCloseTo(ffn.gflop_fwd / (ffn.fwd_ms! / 1e3), 1);
    expect(out.peak_sgemm_gflops).toBeGreaterThan(1);
    expect(lines.join('\n')).toMatch(/a dense FFN relu\s+fwd\s+[\d.]+ ms\s+fwd\+bwd\s+[\d.]+ ms/);
  });

  it.skipIf(!native)('SwiGLU rows: the MoE row counts useful FLOPs and reports its GFLOP/s over the dense SwiGLU row of the same run', async () => {
    const json = path.join(dir, 'glu.json');
    const lines: string[] = [];
    await runBenchBackends({ backends: 'moelab-cpu', only: ['SwiGLU FFN h512', 'SwiGLU MoE topk E64x128'], quick: true, json, log: (l) => lines.push(l) });
    const out = JSON.parse(readFileSync(json, 'utf8')) as { rows: (JsonRow & { vs_dense_fwdbwd?: number; dense?: string })[] };
    expect(out.rows.map((r) => r.name)).toEqual(['sgemm 2048^3', 'sgemm 1024^3', 'f dense SwiGLU FFN h512', 'f SwiGLU MoE topk E64x128 k4']);
    const [dense, moe] = out.rows.slice(2);
    // Dense: three GEMMs of 2 T d h (h = k x expert hidden = 512); MoE: the router's 2 T d E + the same.
    expect(dense!.gflop_fwd).toBeCloseTo((6 * 4096 * 256 * 512) / 1e9, 6);
    expect(moe!.gflop_fwd).toBeCloseTo((2 * 4096 * 256 * 64 + 6 * 4096 * 4 * 256 * 128) / 1e9, 6);
    expect(moe!.dense).toBe('f dense SwiGLU FFN h512');
    expect(moe!.vs_dense_fwdbwd).toBeCloseTo(moe!.gflops_fwdbwd! / dense!.gflops_fwdbwd!, 6);
    expect(lines.join('\n')).toMatch(/f SwiGLU MoE topk E64x128 k4 .* GFLOP\/s\s+[\d.]+x dense/);
  });

  it.skipIf(!native)('the generate row: cached and uncached tokens/s of one workload, speedup = their ratio (moelab-cpu, a small workload)', async () => {
    expect(generateRowName(GENERATE_WORKLOAD)).toBe('f generate moe-tiny 64+256 ctx256');
    const json = path.join(dir, 'gen.json');
    const lines: string[] = [];
    const generate = { preset: 'moe-tiny', prompt: 8, newTokens: 24, contextLength: 16 };
    await runBenchBackends({ backends: 'moelab-cpu', only: ['generate moe-tiny 8+24'], quick: true, json, generate, log: (l) => lines.push(l) });
    const out = JSON.parse(readFileSync(json, 'utf8')) as { rows: (JsonRow & Record<string, number | string | null>)[]; skipped: unknown[] };
    expect(out.skipped).toEqual([]);
    expect(out.rows.map((r) => r.name)).toEqual(['sgemm 2048^3', 'sgemm 1024^3', 'f generate moe-tiny 8+24 ctx16']);
    const row = out.rows[2]!;
    expect(row.group).toBe('gen');
    expect(row.fwdbwd_ms).toBeNull();
    const cached = row.tokens_per_s_cached as number;
    const uncached = row.tokens_per_s_uncached as number;
    expect(cached).toBeGreaterThan(0);
    expect(uncached).toBeGreaterThan(0);
    // fwd_ms is ms per new token of the cached path (median of its runs).
    expect(cached).toBeCloseTo(1000 / row.fwd_ms!, 6);
    expect(row.speedup_cached).toBeCloseTo(cached / uncached, 6);
    expect(row.uncached_ms_per_token).toBeCloseTo(1000 / uncached, 6);
    expect(row.samples).toBe(2);
    expect(row.uncached_samples).toBe(1);
    expect(lines.join('\n')).toMatch(/f generate moe-tiny 8\+24 ctx16\s+cached [\d.]+ tok\/s\s+uncached [\d.]+ tok\/s\s+speedup [\d.]+x/);
  });

  it.skipIf(!native)('attention-mixture rows run with the MHA row and report their time over it (and per expert)', async () => {
    const json = path.join(dir, 'mix.json');
    const lines: string[] = [];
    await runBenchBackends({ backends: 'moelab-cpu', only: ['KV-sharing'], quick: true, json, log: (l) => lines.push(l) });
    const out = JSON.parse(readFileSync(json, 'utf8')) as { rows: (JsonRow & Record<string, number | string | null>)[] };
    expect(out.rows.map((r) => r.name)).toEqual(['sgemm 2048^3', 'sgemm 1024^3', 'd MHA h4', 'd BAM soft-MoA KV-sharing N4 h4']);
    const [mha, bam] = out.rows.slice(2);
    // 4 x (Q, O projections + mixing) + one K, V projection + the router: 2 T d N.
    const T = 4096;
    const d = 256;
    expect(bam!.gflop_fwd).toBeCloseTo((4 * (4 * T * d * d + 4 * 16 * 256 * 256 * d) + 4 * T * d * d + 2 * T * d * 4) / 1e9, 6);
    expect(bam!.mha).toBe('d MHA h4');
    expect(bam!.vs_mha_fwdbwd).toBeCloseTo(bam!.fwdbwd_ms! / mha!.fwdbwd_ms!, 6);
    expect(bam!.vs_n_mha_fwdbwd).toBeCloseTo((bam!.vs_mha_fwdbwd as number) / 4, 6);
    expect(lines.join('\n')).toMatch(/d BAM soft-MoA KV-sharing N4 h4 .* GFLOP\/s\s+[\d.]+x MHA \([\d.]+x N·MHA\)/);
  });
});
