import { beforeAll, describe, expect, it } from 'vitest';
import { testRegistry } from '../../test/helpers.js';
import { buildModel, forwardContext, modelSummary, type Module, Rng, tf, type TransformerLM } from '../index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = testRegistry();
const lm = (block: Record<string, unknown>, extra: Record<string, unknown> = {}, seed = 0) =>
  buildModel<TransformerLM & Module>(
    { type: 'transformer-lm', vocabSize: 32, dModel: 16, contextLength: 12, stack: { groupSize: 2 }, block: { type: 'transformer', ...block }, ...extra },
    registry,
    seed,
  );
const maxDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
const ctx = () => forwardContext(new Rng(0), false);

describe('parallel block', () => {
  it('y = x + Attn(N(x)) + FFN(N(x)) with one norm; norms: 2 gives each branch its own', () => {
    for (const norms of [1, 2] as const) {
      const model = lm({ layout: 'parallel', norms, normType: 'rmsnorm', attention: { type: 'mha', heads: 2 }, ffn: { type: 'dense', hidden: 24 } });
      const block = model.layers[0]!;
      expect(
        block
          .namedParameters()
          .filter(([n]) => n.startsWith('ln'))
          .map(([n]) => n),
      ).toEqual(norms === 1 ? ['ln1.weight'] : ['ln1.weight', 'ln2.weight']);
      if (block.ln2) block.ln2.namedParameters()[0]![1].assign(tf.fill([16], 0.5));
      const x = tf.tensor3d(new Rng(1).normalArray(2 * 5 * 16), [2, 5, 16]);
      const u = block.ln1.forward(x);
      const u2 = block.ln2 ? block.ln2.forward(x) : u;
      const ref = tf.addN([x, block.attention.forward(u, ctx()), block.ffn.forward(u2, ctx())]);
      expect(maxDiff(block.forward(x, ctx()), ref)).toBeLessThan(1e-6);
      // A different function from the sequential block with the same weights.
      const h = tf.add(x, block.attention.forward(u, ctx()));
      const seq = tf.add(h, block.ffn.forward(block.ln1.forward(h), ctx()));
      expect(maxDiff(block.forward(x, ctx()), seq)).toBeGreaterThan(1e-3);
    }
  });

  it('sequential layouts are unchanged (parameters and initialisation do not move)', () => {
    const a = lm({ attention: { type: 'mha', heads: 2 }, ffn: { type: 'dense', hidden: 24 } });
    const b = lm({ layout: 'sequential', attention: { type: 'mha', heads: 2 }, ffn: { type: 'dense', hidden: 24 } });
    expect(a.namedParameters().map(([n]) => n)).toEqual(b.namedParameters().map(([n]) => n));
    const tokens = tf.tensor2d([[1, 2, 3, 4]], [1, 4], 'int32');
    expect(maxDiff(a.forward(tokens, ctx()), b.forward(tokens, ctx()))).toBe(0);
  });

  it('bad layouts: one-line errors naming the JSON path', () => {
    expect(() => lm({ layout: 'parallel', norm: 'peri' })).toThrow('$.block.norm: a parallel block normalises its input once (norm: "pre")');
    expect(() => lm({ norms: 1 })).toThrow('$.block.norms: a sequential block has two norms (one per branch); norms: 1 needs layout: "parallel"');
  });
});

describe('learned absolute position embeddings', () => {
  it('add P[t] to the token embedding at position t (position_embedding.weight [contextLength, d]); other weights keep their init', () => {
    const block = { attention: { type: 'mha', heads: 2, ropeDims: 0 }, ffn: { type: 'dense', hidden: 24 } };
    const plain = lm(block);
    const learned = lm(block, { positionEmbedding: 'learned' });
    const names = learned.namedParameters().map(([n, v]) => `${n} ${v.shape}`);
    expect(names).toContain('position_embedding.weight 12,16');
    const P = learned.positions!.weight;
    expect(tf.moments(P).variance.dataSync()[0]).toBeGreaterThan(0);
    const tokens = tf.tensor2d([[3, 1, 4, 1, 5, 9]], [1, 6], 'int32');
    const saved = P.clone();
    P.assign(tf.zeros(P.shape));
    expect(maxDiff(learned.forward(tokens, ctx()), plain.forward(tokens, ctx()))).toBeLessThan(1e-6);
    P.assign(saved);
    // Without RoPE, a repeated token at two positions gets different outputs only through P.
    const out = learned.forward(tf.tensor2d([[7, 7]], [1, 2], 'int32'), ctx());
    const rows = tf.unstack(tf.reshape(out, [2, 32]));
    expect(maxDiff(rows[0]!, rows[1]!)).toBeGreaterThan(1e-4);
    const g = tf.variableGrads(() => tf.sum(tf.square(learned.forward(tokens, ctx()))) as tf.Scalar, [P]).grads[P.name]!;
    const rowNorms = tf.sum(tf.abs(g), 1).dataSync();
    for (let t = 0; t < 6; t++) expect(rowNorms[t]).toBeGreaterThan(0);
    for (let t = 6; t < 12; t++) expect(rowNorms[t]).toBe(0);
    const s = modelSummary(learned);
    expect(s.parameters - s.nonEmbeddingParameters).toBe(32 * 16 * 2 + 12 * 16);
  });
});

describe('forward FLOPs per token (Kaplan / BAM Table 10 convention)', () => {
  it('dense toy config of the upcycling scenario (d 64, 3 parallel layers, 2 heads, SwiGLU 128, n_ctx 64): 303,104 = 0.909 MFLOP / 3 per training token', () => {
    const model = buildModel<TransformerLM & Module>(
      {
        type: 'transformer-lm',
        vocabSize: 256,
        dModel: 64,
        contextLength: 64,
        stack: { groupSize: 3 },
        positionEmbedding: 'learned',
        outNorm: 'rmsnorm',
        block: {
          type: 'transformer',
          layout: 'parallel',
          normType: 'rmsnorm',
          attention: { type: 'mha', heads: 2, ropeDims: 0 },
          ffn: { type: 'dense', hidden: 128, glu: true, activation: 'silu' },
        },
      },
      registry,
      0,
    );
    // per layer: attention 8 d² + 2 n_ctx d = 40,960; SwiGLU 2·3·d·h = 49,152; readout 2·V·d = 32,768
    expect(modelSummary(model).forwardFlopsPerToken).toBe(3 * (40_960 + 49_152) + 32_768);
    expect(3 * modelSummary(model).forwardFlopsPerToken).toBe(909_312);
  });
});

describe('per-layer blocks', () => {
  it('blocks gives each distinct layer its own block spec; its length must match groupSize', () => {
    const dense = { type: 'transformer', attention: { type: 'mha', heads: 2 }, ffn: { type: 'dense', hidden: 24 } };
    const moe = { ...dense, ffn: { type: 'moe', experts: 2, router: { type: 'softmax-topk', k: 1, renormalize: false }, expert: { type: 'mlp', hidden: 8 } } };
    const model = lm({}, { blocks: [dense, moe] });
    expect(model.layers.map((b) => b.ffn.constructor.name)).toEqual(['DenseFFN', 'MoELayer']);
    expect(model.namedParameters().some(([n]) => n === 'transformer.layers.1.ffn.experts.w1')).toBe(true);
    expect(() => lm({}, { blocks: [dense] })).toThrow(/^\$\.blocks: blocks lists 1 block specs but stack\.groupSize is 2/);
    expect(() => lm({}, { blocks: [dense, { ...moe, ffn: { ...moe.ffn, expertNames: ['a'] } }] })).toThrow(
      /\$\.blocks\[1\]\.ffn\.expertNames: expertNames has 1 labels for 2 experts/,
    );
  });
});
