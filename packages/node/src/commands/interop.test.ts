/**
 * The scale-out path of the README ("When one machine is not enough") through the moelab program,
 * in-process: a Mixtral-shaped checkpoint made here, `moelab export --format hf`, (the distributed run
 * happens elsewhere,) `moelab import` the directory back, and continue here: the imported checkpoint
 * evaluates to the same loss, generates the same text and inspects. Refusals and unknown formats are
 * one-line errors that write nothing.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildModel, type NodeSpec, tf } from '@moelab/core';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { textFile, tmp } from '../../test/helpers.js';
import { type Model, saveCheckpoint } from '../checkpoint.js';
import { runCli } from '../program.js';
import { createDefaultRegistry } from '../registry.js';

const mixtralSpec = {
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 16,
  contextLength: 16,
  stack: { groupSize: 2 },
  block: {
    type: 'transformer',
    normType: { type: 'rmsnorm', eps: 1e-5 },
    attention: { type: 'mha', heads: 4, kvHeads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'mixtral' }, expert: { type: 'glu', hidden: 16 } },
  },
  outNorm: { type: 'rmsnorm', eps: 1e-5 },
} as NodeSpec;

/** Run the program in-process; returns the exit code, stdout and the error line. */
async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s);
    return true;
  });
  try {
    const code = await runCli(argv, { out: (s) => (out += s), err: (s) => (err += s) });
    return { code, out, err };
  } finally {
    spy.mockRestore();
  }
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
    saveCheckpoint(ckpt, buildModel<Model>(mixtralSpec, createDefaultRegistry(), 4), { spec: mixtralSpec, step: 3, seed: 0 });
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
    const vocab: Record<string, number> = { '[UNK]': 0 };
    for (const c of 'abcdefghijklmnopqrstuvwxyz.') vocab[c] = Object.keys(vocab).length;
    vocab.th = Object.keys(vocab).length;
    vocab.the = Object.keys(vocab).length;
    const tokJson = JSON.stringify({
      version: '1.0',
      added_tokens: [],
      normalizer: { type: 'Lowercase' },
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: null,
      decoder: null,
      model: { type: 'BPE', vocab, merges: ['t h', 'th e'], unk_token: '[UNK]' },
    });
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
});
