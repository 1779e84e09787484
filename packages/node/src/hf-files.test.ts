/**
 * Hugging Face directories on disk: export (sharded with an index above the size limit, f32 and bf16)
 * and import back give a checkpoint whose weights are bit-exact (f32) and whose logits are the
 * original's; a tokenizer.json travels both ways; bad directories — a missing shard, a tensor of the
 * wrong shape, an unknown model_type, a tokenizer.json that does not parse — are one-line errors naming
 * the file and the tensor, and leave no output directory behind.
 */
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { forwardContext, readSafetensors, Rng, tf } from '@moelab/core';
import { byteTokenizerJson, safetensorsPrefix } from '@moelab/interop';
import { beforeAll, describe, expect, it } from 'vitest';
import { bpeTokenizerJson, hfTinySpec, saveTinyCheckpoint, tmp } from '../test/helpers.js';
import { loadCheckpoint, loadCheckpointTokenizer, type Model, saveCheckpoint } from './checkpoint.js';
import { exportHfCheckpoint, importHfCheckpoint, openHfWeights, parseSize } from './hf-files.js';
import { createDefaultRegistry } from './registry.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createDefaultRegistry();

const spec = hfTinySpec({
  attention: { qkvBias: true },
  ffn: { router: { type: 'qwen2-moe', k: 2 }, expert: { type: 'glu', hidden: 8 }, shared: { type: 'glu', hidden: 12 }, sharedGate: 'sigmoid' },
});

function logits(m: Model): Float32Array {
  return tf.tidy(
    () => m.forward(tf.tensor2d([[72, 101, 108, 108, 111, 32, 119]], [1, 7], 'int32'), forwardContext(new Rng(0), false)).dataSync() as Float32Array,
  );
}

function checkpoint(root: string): { dir: string; model: Model } {
  const dir = join(root, 'ckpt');
  return { dir, model: saveTinyCheckpoint(dir, spec, { seed: 3, step: 5, perturb: false, registry }) };
}

describe('Hugging Face directories', () => {
  it('export shards above the size limit with an index; import back is bit-exact with the same logits', () => {
    const root = tmp();
    const { dir, model } = checkpoint(root);
    const hf = join(root, 'hf');
    const { plan, files } = exportHfCheckpoint(dir, hf, { registry, maxShardBytes: 20_000 });
    expect(plan.arch.modelType).toBe('qwen2_moe');
    const shards = readdirSync(hf).filter((f) => f.endsWith('.safetensors'));
    expect(shards.length).toBeGreaterThan(1);
    expect(shards[0]).toMatch(/^model-00001-of-000\d\d\.safetensors$/);
    expect(files).toContain('model.safetensors.index.json');
    const index = JSON.parse(readFileSync(join(hf, 'model.safetensors.index.json'), 'utf8'));
    expect(Object.keys(index.weight_map).length).toBe(plan.outputs.length);
    const config = JSON.parse(readFileSync(join(hf, 'config.json'), 'utf8'));
    expect(config).toMatchObject({
      architectures: ['Qwen2MoeForCausalLM'],
      model_type: 'qwen2_moe',
      num_experts: 4,
      num_experts_per_tok: 2,
      num_key_value_heads: 2,
      shared_expert_intermediate_size: 12,
      norm_topk_prob: false,
      torch_dtype: 'float32',
    });
    // Every shard holds at most the limit (tensors never split), in HF [out, in] layout.
    const w = openHfWeights(hf);
    expect(w.shape('model.layers.1.mlp.experts.3.down_proj.weight')).toEqual([16, 8]);
    w.close();
    // The byte tokenizer travels as a tokenizer.json that encodes to the same ids.
    expect(readFileSync(join(hf, 'tokenizer.json'), 'utf8')).toBe(byteTokenizerJson());

    const back = join(root, 'back');
    const r = importHfCheckpoint(hf, back);
    expect(r.tokenizer).toBe('byte');
    const a = readSafetensors(new Uint8Array(readFileSync(join(dir, 'model.safetensors')))).tensors;
    const b = readSafetensors(new Uint8Array(readFileSync(join(back, 'model.safetensors')))).tensors;
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [name, t] of a)
      expect(Buffer.from((b.get(name)!.data as Float32Array).buffer).equals(Buffer.from((t.data as Float32Array).buffer)), name).toBe(true);
    const loaded = loadCheckpoint(back, registry);
    expect(Array.from(logits(loaded.model))).toEqual(Array.from(logits(model)));
    expect(loaded.config.tokenizer).toBe('byte');
  });

  it('bf16 export halves the bytes; import reads bf16 back to within bf16 rounding', () => {
    const root = tmp();
    const { dir, model } = checkpoint(root);
    const hf = join(root, 'hf16');
    exportHfCheckpoint(dir, hf, { registry, dtype: 'BF16' });
    const raw = readFileSync(join(hf, 'model.safetensors'));
    expect(raw.toString('utf8', 8, 8 + 200)).toContain('"BF16"');
    const back = join(root, 'back16');
    importHfCheckpoint(hf, back);
    const orig = readSafetensors(new Uint8Array(readFileSync(join(dir, 'model.safetensors')))).tensors.get(
      `transformer.layers.0.attention.q_proj.weight`,
    )!.data;
    const again = readSafetensors(new Uint8Array(readFileSync(join(back, 'model.safetensors')))).tensors.get(
      `transformer.layers.0.attention.q_proj.weight`,
    )!.data;
    let worst = 0;
    for (let i = 0; i < orig.length; i++) worst = Math.max(worst, Math.abs(again[i]! - orig[i]!) / Math.abs(orig[i]!));
    expect(worst).toBeGreaterThan(0);
    expect(worst).toBeLessThanOrEqual(2 ** -8);
    const l1 = logits(model);
    const l2 = logits(loadCheckpoint(back, registry).model);
    expect(Math.max(...Array.from(l1, (v, i) => Math.abs(v - l2[i]!)))).toBeLessThan(0.05);
  });

  it("a Hugging Face tokenizer.json comes in with the model, serves eval/generate's encode, and goes out again", () => {
    const root = tmp();
    const { dir } = checkpoint(root);
    const hf = join(root, 'hf');
    exportHfCheckpoint(dir, hf, { registry });
    const { json: tokJson, vocab } = bpeTokenizerJson();
    writeFileSync(join(hf, 'tokenizer.json'), tokJson);
    const back = join(root, 'back');
    expect(importHfCheckpoint(hf, back).tokenizer).toBe('tokenizer.json');
    expect(readFileSync(join(back, 'tokenizer.json'), 'utf8')).toBe(tokJson);
    const tok = loadCheckpointTokenizer(back);
    expect(Array.from(tok.encode('The cat'))).toEqual([vocab.the, vocab.c, vocab.a, vocab.t]);
    // Saved again (e.g. after training), the tokenizer stays with the checkpoint; exported, it goes along.
    const again = join(root, 'again');
    saveCheckpoint(again, loadCheckpoint(back, registry).model, { spec, step: 6, seed: 3, tokenizer: tok });
    expect(JSON.parse(readFileSync(join(again, 'config.json'), 'utf8')).tokenizer).toBe('tokenizer.json');
    exportHfCheckpoint(again, join(root, 'hf2'), { registry });
    expect(readFileSync(join(root, 'hf2', 'tokenizer.json'), 'utf8')).toBe(tokJson);
  });

  it('bad directories: one-line errors naming file and tensor, no output left behind', () => {
    const root = tmp();
    const { dir } = checkpoint(root);
    const hf = join(root, 'hf');
    exportHfCheckpoint(dir, hf, { registry, maxShardBytes: 20_000 });
    const out = join(root, 'never');
    const attempt = () => importHfCheckpoint(hf, out);

    const index = JSON.parse(readFileSync(join(hf, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const last = Object.values(index.weight_map).at(-1)!;
    const kept = readFileSync(join(hf, last));
    rmSync(join(hf, last));
    expect(attempt).toThrow(new RegExp(`^${join(hf, last)}: shard ${last} is missing \\(it holds tensor "[^"]+", model.safetensors.index.json says\\)$`));
    writeFileSync(join(hf, last), kept);

    // A shard whose k_proj has the wrong shape (as if num_key_value_heads were 4).
    const first = index.weight_map['model.layers.0.self_attn.k_proj.weight']!;
    const original = readFileSync(join(hf, first));
    const names = Object.entries(index.weight_map)
      .filter(([, f]) => f === first)
      .map(([n]) => n);
    const w = openHfWeights(hf);
    const tensors = names.map((n) => ({ name: n, dtype: 'F32' as const, shape: n === 'model.layers.0.self_attn.k_proj.weight' ? [16, 16] : w.shape(n)! }));
    const datas = names.map((n) => (n === 'model.layers.0.self_attn.k_proj.weight' ? new Float32Array(256) : w.read(n)));
    w.close();
    const { prefix } = safetensorsPrefix(tensors);
    writeFileSync(join(hf, first), Buffer.concat([prefix, ...datas.map((d) => Buffer.from(d.buffer))]));
    expect(attempt).toThrow(
      new RegExp(
        `^${join(hf, first)}: tensor "model.layers.0.self_attn.k_proj.weight" has shape \\[16,16\\], a qwen2_moe model of this config.json needs \\[8,16\\]$`,
      ),
    );
    writeFileSync(join(hf, first), original);

    const cfgPath = join(hf, 'config.json');
    const cfg = readFileSync(cfgPath, 'utf8');
    writeFileSync(cfgPath, cfg.replace('"qwen2_moe"', '"qwen2moe"'));
    expect(attempt).toThrow(/config.json: model_type: unknown model_type "qwen2moe" \(did you mean qwen2_moe[^)]*\); moelab converts mixtral, qwen2_moe/);
    writeFileSync(cfgPath, cfg);

    writeFileSync(join(hf, 'tokenizer.json'), '{"model": {"type": "BPE", "vocab": ');
    expect(attempt).toThrow(new RegExp(`^${join(hf, 'tokenizer.json')}: not valid JSON \\(`));
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(root).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('export refuses what the target cannot express in one line, and writes nothing', () => {
    const root = tmp();
    const { dir } = checkpoint(root);
    expect(() => exportHfCheckpoint(dir, join(root, 'x'), { registry, arch: 'olmoe' })).toThrow(
      /^cannot export as olmoe: a gated shared expert is Qwen2-MoE \(qwen2_moe\); architectures that can hold this model: qwen2_moe$/,
    );
    expect(existsSync(join(root, 'x'))).toBe(false);
    expect(parseSize('5GB')).toBe(5e9);
    expect(parseSize('2MiB')).toBe(2 ** 21);
    expect(() => parseSize('lots')).toThrow(/^--max-shard-size: "lots" is not a size/);
  });
});
