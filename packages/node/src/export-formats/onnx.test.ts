/**
 * `moelab export --format onnx` checked in ONNX Runtime (onnxruntime-node, CPU): every preset of the
 * default registry, shrunk to a tiny size (d 32, 2 distinct layers, T 8), gives the logits of moelab's
 * forward pass within 1e-4, with sparse dispatch and with dense experts (a new preset without an ONNX
 * lowering fails the first test); the command writes the file atomically and writes nothing when it refuses.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { buildModel, forwardContext, type NodeSpec, Rng, tf } from '@moelab/core';
import { exportOnnx, memorySource } from '@moelab/interop';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { cliInProcess as cli, perturbWeights, tmp, weightsOf } from '../../test/helpers.js';
import { loadCheckpoint, type Model, saveCheckpoint } from '../checkpoint.js';
import { createDefaultRegistry } from '../registry.js';

const registry = createDefaultRegistry();
const B = 2;
const T = 8;

type Spec = Record<string, unknown>;

/** The object at a dotted path of a spec (e.g. `block.ffn`), to edit in place. */
function at(s: Spec, path: string): Spec {
  return path.split('.').reduce((o, k) => o[k] as Spec, s);
}

/** The tiny version of each preset: same structure, small widths (d 32, context 8, at most 2 distinct layers). */
const TINY: Record<string, (s: Spec) => void> = {
  'dense-tiny': (s) => {
    at(s, 'block.ffn').hidden = 48;
  },
  'moe-tiny': (s) => {
    at(s, 'block.ffn.expert').hidden = 16;
  },
  'moeut-tiny-dense-params': (s) => {
    at(s, 'block.ffn').hidden = 40;
  },
  'moeut-tiny': (s) => {
    Object.assign(at(s, 'block.attention'), { headDim: 8, experts: 3 });
    Object.assign(at(s, 'block.ffn'), { experts: 8, expertSize: 8 });
  },
  'bam-attn-tiny': (s) => {
    at(s, 'block.ffn').hidden = 48;
  },
  'moa-tiny': (s) => {
    at(s, 'block.attention').headDim = 8;
    at(s, 'block.ffn').hidden = 48;
  },
  'peer-tiny': (s) => {
    Object.assign(at(s, 'block.ffn'), { experts: 64, heads: 2, k: 4, keyDim: 8 });
  },
  'moeut-tiny-dense-compute': (s) => {
    at(s, 'block.ffn').hidden = 24;
  },
  'monet-tiny': (s) => {
    Object.assign(at(s, 'block.ffn'), { experts: 8, k: 2 });
  },
};

function tiny(name: string): NodeSpec {
  const s = registry.preset(name).spec as Spec;
  s.dModel = 32;
  s.contextLength = T;
  s.stack = { ...at(s, 'stack'), groupSize: Math.min(2, at(s, 'stack').groupSize as number) };
  TINY[name]?.(s);
  return s as NodeSpec;
}

const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 11) % 256);

/** Logits of a model given as bytes, or as a path (a model with external data is read from its folder). */
async function ortLogits(model: Uint8Array | string): Promise<{ dims: readonly number[]; data: Float32Array }> {
  const session = typeof model === 'string' ? await ort.InferenceSession.create(model) : await ort.InferenceSession.create(model);
  try {
    const out = await session.run({
      input_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(ids, (v) => BigInt(v)),
        [B, T],
      ),
    });
    return { dims: out.logits!.dims, data: out.logits!.data as Float32Array };
  } finally {
    await session.release();
  }
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function moelabLogits(model: Model): Float32Array {
  return tf.tidy(() => model.forward(tf.tensor2d(ids, [B, T], 'int32'), forwardContext(new Rng(0), false)).dataSync() as Float32Array);
}

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('ONNX export of the registry presets', () => {
  it('every preset is checked for parity', () => {
    expect(registry.presetNames()).toEqual(Object.keys(TINY).sort());
  });

  for (const name of Object.keys(TINY)) {
    it(`${name}: ONNX Runtime logits equal moelab's within 1e-4, sparse and with dense experts`, async () => {
      const spec = tiny(name);
      const model = buildModel<Model>(spec, registry, 1);
      perturbWeights(model);
      const weights = weightsOf(model);
      const expected = moelabLogits(model);
      for (const denseExperts of [false, true]) {
        const { bytes } = exportOnnx(spec, registry, memorySource(weights), { denseExperts });
        const got = await ortLogits(bytes);
        expect(got.dims).toEqual([B, T, (spec as Spec).vocabSize]);
        expect(maxAbsDiff(got.data, expected), `denseExperts: ${denseExperts}`).toBeLessThan(1e-4);
      }
      model.dispose();
    });
  }
});

describe('moelab export --format onnx', () => {
  it('writes a file ONNX Runtime runs to the checkpoint logits, sparse, with --onnx-dense-experts and with --onnx-external-data; refusals write nothing', async () => {
    const root = tmp();
    const ckpt = join(root, 'run', 'checkpoint');
    const spec = tiny('moe-tiny');
    const built = buildModel<Model>(spec, registry, 5);
    perturbWeights(built);
    saveCheckpoint(ckpt, built, { spec, step: 2, seed: 5 });
    built.dispose();
    const { model } = loadCheckpoint(ckpt, registry);
    const expected = moelabLogits(model);
    model.dispose();

    const file = join(root, 'out', 'model.onnx');
    const r = await cli('export', ckpt, '--format', 'onnx', '--out', file);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^exported .* as ONNX \(opset 17\) to .*model\.onnx: \d+ nodes, \d+ parameters, [\d.]+ MiB\n$/);
    expect(maxAbsDiff((await ortLogits(new Uint8Array(readFileSync(file)))).data, expected)).toBeLessThan(1e-4);
    expect(readdirSync(join(root, 'out'))).toEqual(['model.onnx']); // no temporary file left beside it

    const dense = join(root, 'out', 'dense.onnx');
    expect((await cli('export', ckpt, '--format', 'onnx', '--onnx-dense-experts', '--out', dense)).out).toContain('dense experts');
    expect(maxAbsDiff((await ortLogits(new Uint8Array(readFileSync(dense)))).data, expected)).toBeLessThan(1e-4);

    // --onnx-external-data: the weights in ext.onnx.data beside ext.onnx; ONNX Runtime reads both.
    const ext = join(root, 'out', 'ext.onnx');
    const e = await cli('export', ckpt, '--format', 'onnx', '--onnx-external-data', '--out', ext);
    expect(e.err).toBe('');
    expect(e.out).toMatch(/ to .*ext\.onnx: \d+ nodes, \d+ parameters, [\d.]+ MiB \+ \d+ weight tensors in .*ext\.onnx\.data \([\d.]+ MiB\)\n$/);
    expect(readdirSync(join(root, 'out')).sort()).toEqual(['dense.onnx', 'ext.onnx', 'ext.onnx.data', 'model.onnx']);
    expect(statSync(ext).size).toBeLessThan(statSync(file).size / 2);
    expect(maxAbsDiff((await ortLogits(ext)).data, expected)).toBeLessThan(1e-4);

    // Capacity drops at inference depend on the other tokens of the batch: refused, nothing written.
    const refusedCkpt = join(root, 'capacity', 'checkpoint');
    const capSpec = tiny('moe-tiny') as Spec;
    at(capSpec, 'block.ffn').capacityFactor = 1.25;
    const capped = buildModel<Model>(capSpec as NodeSpec, registry, 0);
    saveCheckpoint(refusedCkpt, capped, { spec: capSpec as NodeSpec, step: 0, seed: 0 });
    capped.dispose();
    const bad = await cli('export', refusedCkpt, '--format', 'onnx', '--out', join(root, 'no', 'capped.onnx'));
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(
      /^moelab: \$\.block\.ffn\.capacityFactor: capacity factor 1\.25 at inference drops assignments depending on the other tokens of the batch; the ONNX graph is dropless \(set evalCapacityFactor: 0\)\n$/,
    );
    expect(existsSync(join(root, 'no'))).toBe(false);
  });
});
