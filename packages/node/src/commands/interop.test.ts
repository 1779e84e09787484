/**
 * The scale-out path of the README ("When one machine is not enough") through the moelab program,
 * in-process: a Mixtral-shaped checkpoint made here, `moelab export --format hf`, (the distributed run
 * happens elsewhere,) `moelab import` the directory back, and continue here: the imported checkpoint
 * evaluates to the same loss, generates the same text and inspects, and trains further (`train
 * <checkpoint> --resume`: fresh optimizer state, said on stderr) with its tokenizer.json. Refusals and
 * unknown formats are one-line errors that write nothing.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readSafetensors, tf } from '@moelab/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { bpeTokenizerJson, cliInProcess as cli, hfTinySpec, saveTinyCheckpoint, textFile, tmp } from '../../test/helpers.js';

const mixtralSpec = hfTinySpec();

/** The float32 tensors of a checkpoint's model.safetensors. */
function tensorsOf(ckpt: string): Map<string, Float32Array> {
  const file = readSafetensors(new Uint8Array(readFileSync(join(ckpt, 'model.safetensors'))), 'model.safetensors');
  return new Map([...file.tensors].map(([n, t]) => [n, t.data as Float32Array]));
}

describe('moelab export / import (Hugging Face)', () => {
  let root: string;
  let data: string;
  let ckpt: string;
  beforeAll(async () => {
    await tf.setBackend('cpu');
    root = tmp();
    data = textFile(root);
    ckpt = join(root, 'run', 'checkpoint');
    saveTinyCheckpoint(ckpt, mixtralSpec, { seed: 4, step: 3, perturb: false }).dispose();
  });

  it('export -> import -> continue here: same loss, same generated text, inspect works', async () => {
    const hf = join(root, 'hf');
    const ex = await cli('export', ckpt, '--format', 'hf', '--out', hf);
    expect(ex.code, ex.err).toBe(0);
    expect(ex.out).toMatch(/^exported .* as mixtral \(MixtralForCausalLM\) to .*: \d+ tensors in 1 safetensors file, f32\n$/);
    const config = JSON.parse(readFileSync(join(hf, 'config.json'), 'utf8'));
    expect(config).toMatchObject({ model_type: 'mixtral', num_local_experts: 4, num_experts_per_tok: 2, num_key_value_heads: 2, router_aux_loss_coef: 0.001 });

    const back = join(root, 'imported');
    const im = await cli('import', hf, '--out', back);
    expect(im.code, im.err).toBe(0);
    expect(im.out).toMatch(/^imported mixtral from .* to .*: \d+ tensors, 2 layers, byte tokenizer\n$/);

    const evalOf = async (c: string) =>
      JSON.parse((await cli('eval', c, '--data', data, '--eval-batches', '2', '--batch', '2', '--seq', '16', '--json', '--backend', 'cpu')).out);
    expect((await evalOf(back)).loss).toBe((await evalOf(ckpt)).loss);
    const gen = async (c: string) => (await cli('generate', c, '--prompt', 'the ', '--tokens', '8', '--temperature', '0', '--backend', 'cpu')).out;
    expect(await gen(back)).toBe(await gen(ckpt));
    const ins = await cli('inspect', back, '--text', 'the quick brown fox', '--json', '--backend', 'cpu');
    expect(ins.code, ins.err).toBe(0);
    expect(JSON.parse(ins.out).layers).toHaveLength(2);
  });

  it('refusals and unknown formats are one line with a non-zero exit, and write nothing', async () => {
    const r = await cli('export', ckpt, '--format', 'hf', '--arch', 'llama', '--out', join(root, 'no'));
    expect(r.code).not.toBe(0);
    expect(r.err).toBe('moelab: cannot export as llama: an MoE feed-forward needs an MoE architecture; architectures that can hold this model: mixtral\n');
    expect(existsSync(join(root, 'no'))).toBe(false);
    expect((await cli('export', ckpt, '--format', 'hff', '--out', join(root, 'no'))).err).toBe(
      'moelab: --format: unknown format "hff". Did you mean: hf? (formats: hf, onnx)\n',
    );
    expect((await cli('import', join(root, 'nothing-here'), '--out', join(root, 'no'))).err).toMatch(
      /^moelab: .*nothing-here\/config.json: file is missing\n$/,
    );
  });

  it('train --tokenizer tokenizes the corpus with a tokenizer.json that travels with the checkpoint, through --resume and eval', async () => {
    const tokJson = bpeTokenizerJson().json;
    writeFileSync(join(root, 'tok.json'), tokJson);
    writeFileSync(join(root, 'small.json'), JSON.stringify({ ...(mixtralSpec as object), vocabSize: 32 }));
    writeFileSync(join(root, 'mixtral.json'), JSON.stringify(mixtralSpec));
    const out = join(root, 'bpe-run');
    const common = ['--data', data, '--batch', '2', '--seq', '8', '--eval-batches', '1', '--out', out, '--backend', 'cpu', '--quiet'];
    const t = await cli('train', join(root, 'small.json'), '--tokenizer', join(root, 'tok.json'), '--steps', '2', ...common);
    expect(t.code, t.err).toBe(0);
    const ck = join(out, 'checkpoint');
    expect(JSON.parse(readFileSync(join(ck, 'config.json'), 'utf8')).tokenizer).toBe('tokenizer.json');
    expect(readFileSync(join(ck, 'tokenizer.json'), 'utf8')).toBe(tokJson);
    const resumed = await cli('train', '--resume', '--steps', '3', ...common);
    expect(resumed.code, resumed.err).toBe(0);
    expect(JSON.parse(readFileSync(join(ck, 'config.json'), 'utf8'))).toMatchObject({ step: 3, tokenizer: 'tokenizer.json' });
    const ev = await cli('eval', ck, '--data', data, '--eval-batches', '1', '--batch', '2', '--seq', '8', '--backend', 'cpu');
    expect(ev.out).toMatch(/bits\/token\n$/);
    const big = await cli('train', join(root, 'small.json'), '--tokenizer', join(root, 'mixtral.json'), '--steps', '1', ...common);
    expect(big.err).toMatch(/^moelab: .*mixtral.json: (not a Hugging Face tokenizer|file is missing)/);
  });

  it('an imported HF directory with its tokenizer.json trains further here (train <checkpoint> --resume), reloads, and goes out and back again', async () => {
    // The "elsewhere" side: an HF directory (exported here, as a distributed run would save it) with a BPE
    // tokenizer.json, long-context RoPE and a sliding window shorter than the training sequences.
    const spec = hfTinySpec({ attention: { slidingWindow: 4, ropeScaling: { type: 'yarn', factor: 2, originalContext: 8 } }, extra: { vocabSize: 32 } });
    const start = join(root, 'bpe-start', 'checkpoint');
    saveTinyCheckpoint(start, spec, { seed: 9 }).dispose();
    const hf = join(root, 'hf-bpe');
    expect((await cli('export', start, '--format', 'hf', '--out', hf)).code).toBe(0);
    const tokJson = bpeTokenizerJson().json;
    writeFileSync(join(hf, 'tokenizer.json'), tokJson);
    const imported = join(root, 'bpe-imported');
    const im = await cli('import', hf, '--out', imported);
    expect(im.out).toMatch(/: \d+ tensors, 2 layers, tokenizer\.json, yarn RoPE scaling ×2, sliding window 4\n$/);
    expect(JSON.parse(readFileSync(join(hf, 'config.json'), 'utf8'))).toMatchObject({ sliding_window: 4, rope_scaling: { rope_type: 'yarn', factor: 2 } });

    // Continue here: no optimizer state in an imported checkpoint, so fresh state, said in one line.
    const run = join(root, 'bpe-continued');
    const common = ['--data', data, '--batch', '2', '--seq', '8', '--eval-batches', '1', '--backend', 'cpu', '--quiet'];
    const t = await cli('train', imported, '--resume', '--steps', '3', '--lr', '3e-3', '--out', run, ...common);
    expect(t.code, t.err).toBe(0);
    expect(t.log).toContain(
      `note: ${imported} has no optimizer.safetensors (e.g. from \`moelab import\`): continued from its weights with fresh optimizer state`,
    );
    const ck = join(run, 'checkpoint');
    expect(JSON.parse(readFileSync(join(ck, 'config.json'), 'utf8'))).toMatchObject({ step: 3, tokenizer: 'tokenizer.json' });
    expect(readFileSync(join(ck, 'tokenizer.json'), 'utf8')).toBe(tokJson);
    expect(existsSync(join(ck, 'optimizer.safetensors'))).toBe(true);
    const lines = readFileSync(join(run, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines[0]).toMatchObject({ type: 'start', resumedFrom: imported, freshOptimizer: true });
    const losses = lines.filter((l) => l.type === 'train').map((l) => l.loss as number);
    expect(losses).toHaveLength(3);
    expect(losses.every(Number.isFinite)).toBe(true);
    // Every weight of the imported model moved (the optimizer updated all of them), none became NaN.
    const before = tensorsOf(imported);
    const after = tensorsOf(ck);
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    for (const [name, w] of after) {
      expect(w.every(Number.isFinite), name).toBe(true);
      expect(
        w.some((v, i) => v !== before.get(name)![i]),
        name,
      ).toBe(true);
    }
    // The continued checkpoint reloads: eval through its tokenizer, and an exact resume of the run (no note now).
    const ev = await cli('eval', ck, '--data', data, '--eval-batches', '1', '--batch', '2', '--seq', '8', '--json', '--backend', 'cpu');
    expect(Number.isFinite(JSON.parse(ev.out).loss)).toBe(true);
    const again = await cli('train', '--resume', '--steps', '4', '--out', run, ...common);
    expect(again.code, again.err).toBe(0);
    expect(again.log).not.toContain('no optimizer.safetensors');
    expect(JSON.parse(readFileSync(join(ck, 'config.json'), 'utf8')).step).toBe(4);
    // ... and out and back in again: the same loss after the second round trip.
    const hf2 = join(root, 'hf-bpe-2');
    expect((await cli('export', ck, '--format', 'hf', '--out', hf2)).code).toBe(0);
    expect(readFileSync(join(hf2, 'tokenizer.json'), 'utf8')).toBe(tokJson);
    const back = join(root, 'bpe-back');
    expect((await cli('import', hf2, '--out', back)).code).toBe(0);
    const lossOf = async (c: string) =>
      JSON.parse((await cli('eval', c, '--data', data, '--eval-batches', '1', '--batch', '2', '--seq', '8', '--json', '--backend', 'cpu')).out).loss;
    expect(await lossOf(back)).toBe(await lossOf(ck));

    // What cannot be continued is one line.
    expect((await cli('train', join(root, 'nowhere'), '--resume', '--out', join(root, 'x'), ...common)).err).toMatch(
      /^moelab: .*nowhere: no such checkpoint directory\n$/,
    );
    expect((await cli('train', hf, '--resume', '--out', join(root, 'x'), ...common)).err).toMatch(
      /^moelab: .*hf-bpe: a Hugging Face directory: import it first \(moelab import DIR --out CHECKPOINT\)\n$/,
    );
    expect((await cli('train', imported, '--resume', ...common)).err).toMatch(/^moelab: --resume needs --out DIR/);
  });
});
