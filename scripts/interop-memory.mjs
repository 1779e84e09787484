#!/usr/bin/env node
/**
 * Peak memory of `moelab export --format hf` and `moelab import` on a ~100M-parameter Mixtral-shaped
 * checkpoint (vocab 32000, d 512, 6 layers, 8 experts of width 896, GQA 8/2: 102.8M parameters, 411 MB
 * in float32). Each conversion runs in its own child process that reports its peak resident set size
 * (process.resourceUsage().maxRSS); a child that only loads the same modules gives the baseline. Not run
 * by CI (it writes about 1.3 GB to a temporary directory). Needs `pnpm build` first.
 *
 * Usage: node scripts/interop-memory.mjs [--keep]
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const nodeDist = join(root, 'packages/node/dist/index.js');
const interopDist = join(root, 'packages/interop/dist/index.js');
const coreDist = join(root, 'packages/core/dist/index.js');

const config = {
  model_type: 'mixtral',
  vocab_size: 32000,
  hidden_size: 512,
  num_hidden_layers: 6,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 1e6,
  num_local_experts: 8,
  num_experts_per_tok: 2,
  intermediate_size: 896,
};

/** Run `code` (an ES module body) in a child Node process; returns its stdout. */
function child(code) {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`child failed (${r.status}):\n${r.stderr}`);
  return r.stdout.trim();
}

const dir = mkdtempSync(join(tmpdir(), 'moelab-interop-memory-'));
try {
  const ckpt = join(dir, 'ckpt');
  mkdirSync(ckpt);
  // The checkpoint is written tensor by tensor with deterministic pseudo-random data (no model is built).
  const made = child(`
    import { planImport, safetensorsPrefix } from ${JSON.stringify(interopDist)};
    import { makeCheckpointConfig, checkpointConfigText, CHECKPOINT_FORMAT } from ${JSON.stringify(coreDist)};
    import { openSync, writeSync, closeSync, writeFileSync } from 'node:fs';
    const plan = planImport(${JSON.stringify(config)});
    const tensors = plan.outputs.map((t) => ({ ...t, dtype: 'F32' }));
    const fd = openSync(${JSON.stringify(join(ckpt, 'model.safetensors'))}, 'w');
    writeSync(fd, safetensorsPrefix(tensors, { format: CHECKPOINT_FORMAT, step: '0' }).prefix);
    let n = 0, s = 1;
    for (const t of tensors) {
      const a = new Float32Array(t.shape.reduce((x, y) => x * y, 1));
      for (let i = 0; i < a.length; i++) { s = (s * 1103515245 + 12345) >>> 0; a[i] = (s / 2 ** 32 - 0.5) * 0.05; }
      writeSync(fd, new Uint8Array(a.buffer));
      n += a.length;
    }
    closeSync(fd);
    writeFileSync(${JSON.stringify(join(ckpt, 'config.json'))}, checkpointConfigText(makeCheckpointConfig({ spec: plan.spec, step: 0, seed: 0 })));
    console.log(n);
  `);
  const params = Number(made);
  const modelMB = (params * 4) / 1e6;
  const rssMB = `(process.resourceUsage().maxRSS / 1024).toFixed(0)`;
  const baseline = child(`import * as n from ${JSON.stringify(nodeDist)}; void n; console.log(${rssMB});`);
  const t0 = performance.now();
  const exported = child(
    `import { exportHfCheckpoint, createDefaultRegistry } from ${JSON.stringify(nodeDist)};
     exportHfCheckpoint(${JSON.stringify(ckpt)}, ${JSON.stringify(join(dir, 'hf'))}, { registry: createDefaultRegistry(), maxShardBytes: 2e8 });
     console.log(${rssMB});`,
  );
  const t1 = performance.now();
  const imported = child(
    `import { importHfCheckpoint } from ${JSON.stringify(nodeDist)};
     importHfCheckpoint(${JSON.stringify(join(dir, 'hf'))}, ${JSON.stringify(join(dir, 'back'))});
     console.log(${rssMB});`,
  );
  const t2 = performance.now();
  const lines = [
    `model: ${(params / 1e6).toFixed(1)}M parameters, ${modelMB.toFixed(0)} MB in float32`,
    `baseline (node + the moelab modules loaded): peak RSS ${baseline} MB`,
    `export --format hf (200 MB shards): peak RSS ${exported} MB = ${(Number(exported) / modelMB).toFixed(2)}x the model, ${((t1 - t0) / 1000).toFixed(1)} s`,
    `import (from the shards): peak RSS ${imported} MB = ${(Number(imported) / modelMB).toFixed(2)}x the model, ${((t2 - t1) / 1000).toFixed(1)} s`,
  ];
  console.log(lines.join('\n'));
  writeFileSync(join(dir, 'result.txt'), `${lines.join('\n')}\n`);
} finally {
  if (!process.argv.includes('--keep')) rmSync(dir, { recursive: true, force: true });
}
