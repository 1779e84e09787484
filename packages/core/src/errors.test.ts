/**
 * Errors and warnings users meet: every message names what is wrong and where.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../test/helpers.js';
import {
  AdamW,
  buildModel,
  checkpointTrainSchema,
  DispatchPlan,
  defaultTrainConfig,
  forwardContext,
  generateTokens,
  loadState,
  MAX_PARAMETERS_ENV,
  type Module,
  MoELayer,
  MoelabError,
  type NodeSpec,
  parseCheckpointConfig,
  resolveBackend,
  Rng,
  setWarningHandler,
  Trainer,
  trainConfigSchema,
  type TrainableModel,
  tf,
} from './index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const spec = (over: Record<string, unknown> = {}, block: Record<string, unknown> = {}): NodeSpec => ({
  type: 'transformer-lm',
  vocabSize: 256,
  dModel: 16,
  contextLength: 8,
  stack: { groupSize: 1, repeats: 2 },
  block: {
    type: 'transformer',
    attention: { type: 'mha', heads: 2 },
    ffn: { type: 'moe', experts: 4, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 8 } },
    ...block,
  },
  ...over,
});

function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a throw');
}

describe('spec unions say what is allowed', () => {
  const reg = testRegistry();
  const ffn = (f: Record<string, unknown>) => spec({}, { ffn: { type: 'moe', experts: 4, expert: { type: 'mlp', hidden: 8 }, ...f } });

  it('a child node without "type" lists the registered types of its kind', () => {
    const e = thrown(() => buildModel(ffn({ router: { k: 2 } }), reg));
    expect(e).toBeInstanceOf(MoelabError);
    expect(e.message).toMatch(/^\$\.block\.ffn\.router: this router node has no "type" field; allowed types: .*softmax-topk/);
    expect(e.message).not.toMatch(/Expected union value/);
  });

  it('a child node of the wrong JSON type lists the registered types too', () => {
    expect(() => buildModel(ffn({ router: 5 }), reg)).toThrow(
      /^\$\.block\.ffn\.router: expected a router node: a type name or an object with a "type" field; allowed types: .*sigma-topk.* \(got 5\)$/,
    );
  });

  it('an enumeration lists its values and the close ones', () => {
    expect(() => buildModel(ffn({ router: 'softmax-topk', expert: { type: 'mlp', activation: 'gelux' } }), reg)).toThrow(
      /^\$\.block\.ffn\.expert\.activation: expected one of "relu", "gelu", .* \(got "gelux"\)\. Did you mean: gelu/,
    );
  });
});

describe('models too large for memory are refused before allocation', () => {
  const reg = testRegistry();
  afterEach(() => {
    delete process.env[MAX_PARAMETERS_ENV];
  });

  it('dModel 1e6: refused with its parameter count and bytes, nothing allocated', () => {
    const before = tf.memory().numTensors;
    const e = thrown(() => buildModel(spec({ dModel: 1_000_000 }), reg));
    expect(e).toBeInstanceOf(MoelabError);
    // One block (shared by the 2 repeats): 4 d² attention, E · 2dh experts (no biases), d·E router, two
    // LayerNorms (2d each); plus embedding and readout (256 d each) and the final LayerNorm.
    const d = 1_000_000;
    const model = 4 * d * d + 4 * 2 * d * 8 + d * 4 + 2 * 2 * d + 2 * 256 * d + 2 * d;
    expect(e.message).toContain(`the model has ${model.toLocaleString('en-US')} parameters (`);
    expect(e.message).toMatch(/^\$: the model has [\d,]+ parameters \([\d.]+ TiB as float32\), more than the limit of [\d,]+ parameters/);
    expect(e.message).toMatch(/MOELAB_MAX_PARAMETERS/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('the count is exact: a limit one below the size refuses, the size itself builds', () => {
    const m = buildModel<Module>(spec(), reg);
    const size = m.stateDict().reduce((s, [, v]) => s + v.size, 0);
    m.dispose();
    const before = tf.memory().numTensors;
    expect(() => buildModel(spec(), reg, 0, { maxParameters: size - 1 })).toThrow(
      new RegExp(
        `the model has ${size.toLocaleString('en-US')} parameters \\(.*\\), more than the limit of ${(size - 1).toLocaleString('en-US')} parameters .* set by the maxParameters option`,
      ),
    );
    expect(tf.memory().numTensors).toBe(before);
    buildModel<Module>(spec(), reg, 0, { maxParameters: size }).dispose();
  });

  it(`${MAX_PARAMETERS_ENV} overrides the default; a bad value is named`, () => {
    process.env[MAX_PARAMETERS_ENV] = '1000';
    expect(() => buildModel(spec(), reg)).toThrow(/more than the limit of 1,000 parameters \(3\.91 KiB\) set by MOELAB_MAX_PARAMETERS/);
    process.env[MAX_PARAMETERS_ENV] = 'lots';
    expect(() => buildModel(spec(), reg)).toThrow(/^MOELAB_MAX_PARAMETERS: must be a positive number of parameters \(got "lots"\)$/);
  });
});

describe("a checkpoint's train section is validated like the spec", () => {
  const config = (train: unknown) => JSON.stringify({ format: 'moelab-checkpoint-v1', spec: spec(), tokenizer: 'byte', step: 1, seed: 0, train });

  it('accepts what the trainer writes', () => {
    expect(parseCheckpointConfig(config({ ...defaultTrainConfig, data: 'brown' })).train).toMatchObject({ lr: defaultTrainConfig.lr, data: 'brown' });
    expect(Object.keys(trainConfigSchema.properties).sort()).toEqual(Object.keys(defaultTrainConfig).sort());
    expect(Object.keys(checkpointTrainSchema.properties)).toContain('data');
  });

  it('names the JSON path of a bad value, an unknown field and a non-object', () => {
    expect(() => parseCheckpointConfig(config({ lr: 'fast' }))).toThrow(/^config\.json: \$\.train\.lr: Expected number \(got "fast"\)$/);
    expect(() => parseCheckpointConfig(config({ batchSize: 0 }), 'run/config.json')).toThrow(
      /^run\/config\.json: \$\.train\.batchSize: Expected integer to be greater or equal to 1/,
    );
    expect(() => parseCheckpointConfig(config({ lrr: 0.1 }))).toThrow(/^config\.json: \$\.train: unknown field "lrr"; allowed: steps, batchSize, .*, data$/);
    expect(() => parseCheckpointConfig(config([1]))).toThrow(/^config\.json: \$\.train: "train" must be an object of training settings \(got \[1\]\)$/);
  });
});

describe('loading weights that hold NaN or Inf warns, naming the tensor', () => {
  it('one warning per tensor, with the counts; the weights still load', () => {
    const m = buildModel<Module>(spec(), testRegistry());
    const tensors = new Map(m.stateDict().map(([n, v]) => [n, { shape: v.shape, data: v.dataSync() as Float32Array }]));
    const bad = tensors.get('transformer.wte.weight') ?? [...tensors.values()][0]!;
    const badName = [...tensors.entries()].find(([, t]) => t === bad)![0];
    bad.data[0] = Number.NaN;
    bad.data[1] = Number.POSITIVE_INFINITY;
    bad.data[2] = Number.NaN;
    const warnings: string[] = [];
    const previous = setWarningHandler((w) => warnings.push(w));
    try {
      const report = loadState(m, tensors, { source: 'model.safetensors' });
      expect(report.nonFinite).toEqual([{ name: badName, nan: 2, inf: 1 }]);
    } finally {
      setWarningHandler(previous);
    }
    expect(warnings).toEqual([`model.safetensors: tensor "${badName}" holds 2 NaN and 1 infinite values (of ${bad.data.length})`]);
    expect(
      Number.isNaN(
        m
          .stateDict()
          .find(([n]) => n === badName)![1]
          .dataSync()[0],
      ),
    ).toBe(true);
    m.dispose();
  });
});

describe('runtime errors are MoelabErrors that say where', () => {
  const reg = testRegistry();
  const model = () => buildModel<TrainableModel>(spec(), reg);

  it('sequences longer than contextLength and token ids outside the vocabulary', () => {
    const m = model();
    const ctx = () => forwardContext(new Rng(0), false);
    const e = thrown(() => m.forward(tf.zeros([1, 9], 'int32'), ctx()));
    expect(e).toBeInstanceOf(MoelabError);
    expect(e.message).toBe("tokens: sequence length 9 exceeds the model's contextLength 8");
    expect(() => m.forward(tf.tensor2d([[1, 2, 300]], [1, 3], 'int32'), ctx())).toThrow(
      /^tokens: token id 300 at \[0, 2\] is outside the vocabulary \[0, 256\)/,
    );
    expect(() => generateTokens(m, [])).toThrow(/the prompt is empty/);
    const data = { batch: (_r: Rng, B: number, T: number) => new Int32Array(B * (T + 1)) };
    expect(() => new Trainer(m, data, { seqLen: 16 })).toThrow(/^seqLen 16 exceeds the model's contextLength 8$/);
    m.dispose();
  });

  it('RoPE dims that do not fit the head are refused at build time, with the JSON path', () => {
    expect(() => buildModel(spec({}, { attention: { type: 'mha', heads: 2, ropeDims: 3 } }), reg)).toThrow(
      /RoPE dims must be even and at most the head size \(3 vs 8\)/,
    );
    const e = thrown(() => buildModel(spec({}, { attention: { type: 'mha', heads: 2, ropeDims: 3 } }), reg));
    expect(e).toBeInstanceOf(MoelabError);
  });

  it('a router and an expert bank that disagree; a dispatch plan out of range', () => {
    const m = model();
    const layer = m.modules().find((x): x is MoELayer => x instanceof MoELayer)!;
    const other = buildModel<Module>(
      spec({}, { ffn: { type: 'moe', experts: 3, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'mlp', hidden: 8 } } }),
      reg,
    );
    const bank = other.modules().find((x): x is MoELayer => x instanceof MoELayer)!.experts;
    expect(() => new MoELayer(layer.router, bank, layer.options)).toThrow(/the router routes to 4 experts but the expert bank holds 3/);
    expect(() => new DispatchPlan(Int32Array.of(0, 1), Int32Array.of(0), 2, 4)).toThrow(/^dispatch plan: tokenIndex has 2 entries but expertIndex has 1$/);
    m.dispose();
    other.dispose();
  });

  it('optimizer state with a missing or mis-shaped tensor names it and the file', () => {
    const m = model();
    const params = m.namedParameters();
    const opt = new AdamW(params, defaultTrainConfig);
    expect(() => opt.loadState(new Map(), 'optimizer.safetensors')).toThrow(/^optimizer\.safetensors: tensor "step" is missing$/);
    const state = opt.stateTensors();
    const [first] = params[0]!;
    state.set(`exp_avg.${first}`, { shape: [1], data: new Float32Array(1) });
    expect(() => opt.loadState(state, 'optimizer.safetensors')).toThrow(
      new RegExp(`^optimizer\\.safetensors: tensor "exp_avg\\.${first.replace(/\./g, '\\.')}" has shape \\[1\\]`),
    );
    opt.dispose();
    m.dispose();
  });

  it('an unknown backend suggests the close names', async () => {
    await expect(resolveBackend('cpux')).rejects.toThrow(/unknown backend "cpux"\. Did you mean: cpu/);
    await expect(resolveBackend('cpux')).rejects.toBeInstanceOf(MoelabError);
    await tf.setBackend('cpu');
  });
});
