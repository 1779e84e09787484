/**
 * `moelab finetune`, `eval --adapter` and `merge-adapter` on the CI-sized smoke configuration of
 * docs/finetune.md#the-brown-to-sotu-scenario: d = 32, 2 layers, E = 4 top-2, h = 32, context 32, a few
 * pretraining steps on Brown, 20 fine-tuning steps on modern State-of-the-Union speeches. Runs the
 * commands in-process (one process for all of them).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readSafetensors, tf } from '@moelab/core';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { runCli } from '../src/program.js';
import { tmp } from './helpers.js';

const smokeSpec = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 32,
  contextLength: 32,
  positionEmbedding: 'learned',
  tieEmbeddings: true,
  stack: { groupSize: 2 },
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 32 } },
  },
};

/** Run moelab in this process; stdout and stderr captured. */
async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s);
    return true;
  });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    err += String(s);
    return true;
  });
  try {
    const code = await runCli(argv, {
      out: (s) => {
        out += s;
      },
      err: (s) => {
        err += s;
      },
    });
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

const ft = ['--data', 'sotu', '--domain', '1946-2021', '--steps', '20', '--batch', '4', '--seq', '32', '--eval-batches', '2', '--backend', 'cpu', '--quiet'];
const ev = ['--data', 'sotu', '--domain', '1946-2021', '--batch', '4', '--seq', '32', '--eval-batches', '2', '--backend', 'cpu', '--json'];

describe('moelab finetune / eval --adapter / merge-adapter', () => {
  let root: string;
  let base: string;
  beforeAll(async () => {
    root = tmp('moelab-ft-');
    writeFileSync(join(root, 'smoke.json'), JSON.stringify(smokeSpec));
    const args = ['--data', 'brown', '--batch', '4', '--seq', '32', '--eval-batches', '1', '--backend', 'cpu', '--quiet'];
    const r = await cli('train', join(root, 'smoke.json'), '--steps', '30', '--out', join(root, 'base'), ...args);
    expect(r.code, r.err).toBe(0);
    base = join(root, 'base', 'checkpoint');
    await tf.setBackend('cpu');
  });

  it('perft-r: identity at init, frozen base, exact count, lower target loss; the adapter holds only adapter tensors and eval --adapter reproduces it', async () => {
    const out = join(root, 'perft-r');
    const r = await cli('finetune', base, '--method', 'perft-r', '--general', 'brown', '--out', out, '--json', ...ft);
    expect(r.code, r.err).toBe(0);
    const res = JSON.parse(r.out);
    expect(res.initDelta).toBe(0);
    expect(res.changedBaseTensors).toEqual([]);
    // M = 4, K' = 2, r = 8 (defaults), d = 32, 2 layers: 2 · (4·2·32·8 + 4·32)
    expect(res.counts.trainable).toBe(2 * (4 * 2 * 32 * 8 + 4 * 32));
    expect(res.target.after.loss).toBeLessThan(res.target.before.loss);
    expect(res.general.after.loss).toBeGreaterThan(0);
    const file = readSafetensors(new Uint8Array(readFileSync(join(out, 'adapter', 'adapter.safetensors'))));
    expect([...file.tensors.keys()].sort()).toEqual([
      'transformer.layers.0.ffn.lora_A',
      'transformer.layers.0.ffn.lora_B',
      'transformer.layers.0.ffn.router',
      'transformer.layers.1.ffn.lora_A',
      'transformer.layers.1.ffn.lora_B',
      'transformer.layers.1.ffn.router',
    ]);
    const lines = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.type === 'train')).toHaveLength(20);
    expect(lines[0]).toMatchObject({ type: 'start', method: 'perft-r', counts: res.counts });
    const e = await cli('eval', base, '--adapter', join(out, 'adapter'), ...ev);
    expect(e.code, e.err).toBe(0);
    expect(JSON.parse(e.out).loss).toBeCloseTo(res.target.after.loss, 5);

    const m = await cli('merge-adapter', base, join(out, 'adapter'), '--out', join(root, 'nope'), '--backend', 'cpu');
    expect(m.code).toBe(2);
    expect(m.err.split('\n').filter((l) => l.startsWith('moelab:'))).toHaveLength(1);
    expect(m.err).toMatch(/^moelab: transformer\.layers\.0\.ffn: cannot merge: PerftR adds a path beside the feed-forward block/);
    expect(existsSync(join(root, 'nope'))).toBe(false);
  });

  it('lora: merge-adapter writes a plain checkpoint that evaluates like base + adapter', async () => {
    const out = join(root, 'lora');
    const r = await cli('finetune', base, '--method', 'lora', '--rank', '4', '--out', out, ...ft);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^lora: 20 steps in \d+ s, trainable 1\.0k of /);
    const adapterEval = JSON.parse((await cli('eval', base, '--adapter', join(out, 'adapter'), ...ev)).out).loss;
    const m = await cli('merge-adapter', base, join(out, 'adapter'), '--out', join(root, 'merged'), '--backend', 'cpu');
    expect(m.code, m.err).toBe(0);
    expect(m.out).toMatch(/^merged 1 adapter node\(s\) into .*merged \(base sha256:[0-9a-f]{12}… -> sha256:[0-9a-f]{12}…\)/);
    const mergedEval = JSON.parse((await cli('eval', join(root, 'merged'), ...ev)).out).loss;
    expect(mergedEval).toBeCloseTo(adapterEval, 4);
  });

  it('bad input: another base, a glob that matches nothing, a rank above the width, an unknown method, bad --options', async () => {
    const other = await cli(
      'train',
      join(root, 'smoke.json'),
      '--steps',
      '1',
      '--seed',
      '1',
      '--out',
      join(root, 'other'),
      '--data',
      'brown',
      '--batch',
      '2',
      '--seq',
      '32',
      '--eval-batches',
      '1',
      '--backend',
      'cpu',
      '--quiet',
    );
    expect(other.code, other.err).toBe(0);
    const cases: [string[], RegExp][] = [
      [
        ['eval', join(root, 'other', 'checkpoint'), '--adapter', join(root, 'lora', 'adapter'), ...ev],
        /adapter\.json: this adapter was trained on the base sha256:[0-9a-f]{12}…, but the model given is sha256:/,
      ],
      [
        ['finetune', base, '--method', 'lora', '--targets', '*.attn.wq', '--out', join(root, 'x'), ...ft],
        /\$\.adapter\.targets\[0\]: target "\*\.attn\.wq" matches no module of the model\. It can attach to: transformer\.layers\.\*\.attention\.q_proj, /,
      ],
      [
        ['finetune', base, '--method', 'perft-s', '--rank', '64', '--out', join(root, 'x'), ...ft],
        /transformer\.layers\.0\.ffn: rank 64 exceeds the width of this layer \(32 -> 32\)/,
      ],
      [['finetune', base, '--method', 'perftr', '--out', join(root, 'x'), ...ft], /--method: unknown method "perftr"\. Did you mean: perft-r/],
      [['finetune', base, '--options', '{"rank": }', '--out', join(root, 'x'), ...ft], /--options: not valid JSON/],
      [
        ['finetune', base, '--out', join(root, 'x'), ...ft, '--domain', '2050'],
        /--domain: no document of "sotu" is in domain "2050" \(domains: 1790-1860, 1861-1945, 1946-2021\)/,
      ],
    ];
    for (const [argv, message] of cases) {
      const r = await cli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(
        r.err.split('\n').filter((l) => l.startsWith('moelab:')),
        r.err,
      ).toHaveLength(1);
      expect(r.err).toMatch(message);
    }
    expect(existsSync(join(root, 'x', 'adapter'))).toBe(false);
  });
});
