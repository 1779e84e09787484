/**
 * Parameter and FLOP counters against the published accounting of BAM (arXiv 2408.08274): Table 9's
 * parameter totals of the 590M models (d 1024, 6 parallel layers with one scale-only norm, untied
 * 256000-token embeddings, SwiGLU hidden 2048, 4 experts, top-1 FFN routing), and the FLOPs per
 * training token of the small upcycling scenario (d 64, 3 layers, 2 heads, SwiGLU 128, n_ctx 64).
 * One block is built at full width and counted; the six layers and the embeddings are added by hand
 * (building 776M parameters in a test is not needed to count them).
 */
import { buildModel, buildNode, corePlugin, createRegistry, type Module, modelSummary, type NodeSpec, tf } from '@moelab/core';
import { experts } from '@moelab/experts';
import { routers } from '@moelab/routers';
import { beforeAll, describe, expect, it } from 'vitest';
import { attention } from './index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const registry = createRegistry(corePlugin, routers, experts, attention);
const swiglu = (hidden: number) => ({ type: 'mlp', hidden, glu: true, activation: 'silu' });
const moe = (E: number, k: number, hidden: number) => ({
  type: 'moe',
  experts: E,
  router: { type: 'softmax-topk', k, renormalize: k > 1 },
  expert: swiglu(hidden),
});
const block = (attention: NodeSpec, ffn: NodeSpec): NodeSpec => ({ type: 'transformer', layout: 'parallel', normType: 'rmsnorm', attention, ffn });

describe('BAM Table 9: parameter accounting of the 590M models', () => {
  const d = 1024;
  const V = 256000;
  const L = 6;
  /** Total and active parameters of an L-layer model from one built block (+ untied embeddings and a final norm). */
  function count(spec: NodeSpec): { total: number; active: number } {
    const b = buildNode<Module>(registry, 'block', spec, '$.block', 0, { dModel: d, contextLength: 256, causal: true, nLayers: L, layerIndex: 0 });
    const r = { total: L * b.parameterCount() + 2 * V * d + d, active: L * b.activeParameterCount() + 2 * V * d + d };
    b.dispose();
    return r;
  }

  it('dense seed: 587,209,728', () => {
    const c = count(block({ type: 'mha', heads: 16 }, { type: 'dense', hidden: 2048, glu: true, activation: 'silu' }));
    expect(c).toEqual({ total: 587_209_728, active: 587_209_728 });
  });

  it('BAM with KV experts: 776,002,560 total; active = the printed 662,731,776 + the FFN routers the paper leaves out', () => {
    const c = count(block({ type: 'bam-soft-moa', experts: 4, heads: 16 }, moe(4, 1, 2048)));
    expect(c.total).toBe(776_002_560);
    // Printed: all 4 attention experts + 1 FFN expert + one router per layer; we count both routers.
    expect(c.active).toBe(662_731_776 + L * 4 * d);
  });

  it('BAM with KV sharing: 738,253,824 total (4 Q + shared K, V + 4 O)', () => {
    const c = count(block({ type: 'bam-soft-moa', experts: 4, heads: 16, kv: 'shared' }, moe(4, 1, 2048)));
    expect(c.total).toBe(738_253_824);
    // The paper prints 612,400,128, which leaves out the shared K/V; ours counts them (and both routers).
    expect(c.active).toBe(587_209_728 + L * (3 * 2 * d * d + 2 * 4 * d));
  });

  it('BTX top-1 of 4: 700,480,512 total, 587,234,304 active', () => {
    const c = count(block({ type: 'mha', heads: 16 }, moe(4, 1, 2048)));
    expect(c).toEqual({ total: 700_480_512, active: 587_234_304 });
  });
});

describe('FLOPs per training token of the upcycling scenario (3 x forward, attention included)', () => {
  const toy = (attention: NodeSpec, ffn: NodeSpec): NodeSpec => ({
    type: 'transformer-lm',
    vocabSize: 256,
    dModel: 64,
    contextLength: 64,
    stack: { groupSize: 3 },
    positionEmbedding: 'learned',
    outNorm: 'rmsnorm',
    block: block(attention, ffn),
  });
  const flops = (spec: NodeSpec) => 3 * modelSummary(buildModel<Module>(spec, registry, 0)).forwardFlopsPerToken;
  const routerFlops = (E: number) => 3 * 3 * 2 * E * 64; // 3 x forward, 3 layers, 2 E d

  it('dense 0.909 M, BTX (4 experts, top-2) 1.352 M, BAM (4 soft attention experts, FFN top-1) 2.015 M; the published numbers leave the routers out', () => {
    const mha = { type: 'mha', heads: 2, ropeDims: 0 };
    expect(flops(toy(mha, { type: 'dense', hidden: 128, glu: true, activation: 'silu' }))).toBe(909_312);
    expect(flops(toy(mha, moe(4, 2, 128))) - routerFlops(4)).toBe(1_351_680);
    const bam = { type: 'bam-soft-moa', experts: 4, heads: 2, rope: false };
    expect(flops(toy(bam, moe(4, 1, 128))) - 2 * routerFlops(4)).toBe(2_015_232);
  });
});
