/**
 * `moelab bench`: the PyTorch anchor's workloads (shared anchors/torch_moe_bench.py) with the same row
 * names, FLOP convention and JSON format, so that `torch_moe_bench.py --compare anchor.json ours.json`
 * prints ratios. FLOPs count matrix multiplies only (2mnk), MoE rows count useful (selected-expert)
 * FLOPs, and forward+backward = 3 x forward. Rows the anchor does not have (group `glu`: SwiGLU experts
 * beside dense SwiGLU FFNs of the same active FLOPs, and the Mixtral-style LM) are ours alone; a MoE
 * row's `vs_dense_fwdbwd` is its useful GFLOP/s over its dense FFN row's in the same run. The
 * attention-mixture rows (BAM with KV experts / shared K/V, MoA; ours alone) report their time over the
 * MHA row's of the same run (`vs_mha_fwd`, `vs_mha_fwdbwd`) and, for a soft mixture of N experts, that
 * ratio over N (`vs_n_mha_fwdbwd`: 1 = no cost beyond the N attentions).
 *
 * `runBenchBackends` runs the rows once per available backend (tensorflow, moelab-cpu, moelab-wasm, wasm, cpu, in
 * that order; on moelab-cpu the MoE and SwitchHead rows go through its fused `MoelabMoeMLP` /
 * `MoelabMoeLinear` kernels, which core's ops/moe.ts calls when the backend has them). The JSON of
 * the first backend is written to `--json out.json` itself, the others to `out.<backend>.json`, so
 * `torch_moe_bench.py --compare anchor.json out.json out.wasm.json` compares them row by row.
 * A call that takes longer than SLOW_MS on its first run is timed once (the plain cpu backend needs
 * minutes per LM step); `samples` in each row says how many timings its medians come from.
 */
import os from 'node:os';
import { loadQuantizedState, quantizedSize, quantizedTensors, quantizeModel } from '@moelab/compress';
import {
  MoelabError,
  buildModel,
  forwardContext,
  generateTokens,
  hasKernel,
  MOE_PACKED_KERNEL,
  readSafetensors,
  writeSafetensors,
  type LanguageModel,
  type Module,
  MultiHeadAttention,
  type NodeSpec,
  type Registry,
  Rng,
  tf,
  Trainer,
} from '@moelab/core';
import { chooseBackend } from './backends.js';
import { writeFileAtomic } from './fsutil.js';
import { createDefaultRegistry } from './registry.js';

export interface BenchOptions {
  only?: string[];
  quick?: boolean;
  json?: string;
  log?: (line: string) => void;
  /** The generate row's workload (default: moe-tiny, a 64-token prompt, 256 new tokens, a 256-token context). */
  generate?: GenerateWorkload;
}

/** What the `generate` row times: `newTokens` sampled greedily after a `prompt`-token prompt. */
export interface GenerateWorkload {
  preset: string;
  prompt: number;
  newTokens: number;
  contextLength: number;
}

/** The issue's workload: tokens/s for 256 new tokens after a 64-token prompt with a 256-token context. */
export const GENERATE_WORKLOAD: GenerateWorkload = { preset: 'moe-tiny', prompt: 64, newTokens: 256, contextLength: 256 };

/** The generate row's name for a workload. */
export function generateRowName(w: GenerateWorkload): string {
  return `f generate ${w.preset} ${w.prompt}+${w.newTokens} ctx${w.contextLength}`;
}

interface Row {
  group: string;
  name: string;
  shape: string;
  gflop_fwd: number;
  gflop_fwdbwd: number;
  fwd_ms: number | null;
  fwd_ms_min: number | null;
  fwdbwd_ms: number | null;
  fwdbwd_ms_min: number | null;
  gflops_fwd: number | null;
  gflops_fwdbwd: number | null;
  gflops_fwd_best: number | null;
  gflops_fwdbwd_best: number | null;
  pct_peak_fwd: number | null;
  pct_peak_fwdbwd: number | null;
  [k: string]: unknown;
}

function stats(times: number[]): [number, number] {
  const s = [...times].sort((a, b) => a - b);
  return [s[Math.floor(s.length / 2)]!, s[0]!];
}

/** A call slower than this on its first run is not repeated: that first run is its timing. */
const SLOW_MS = 8000;
let lastSamples = 0;

function timeIt(fn: () => void, warmup: number, reps: number): [number, number] {
  const t0 = performance.now();
  fn();
  const first = performance.now() - t0;
  if (first > SLOW_MS) {
    lastSamples = 1;
    return [first, first];
  }
  for (let i = 1; i < warmup; i++) fn();
  const t: number[] = [];
  if (warmup === 0) t.push(first);
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    t.push(performance.now() - t0);
  }
  lastSamples = t.length;
  return stats(t);
}

/** Forward (no autodiff) and forward+backward (gradient of sum(out * R) w.r.t. params and input). */
function benchModule(
  m: Module,
  forward: (x: tf.Tensor) => tf.Tensor,
  xShape: number[],
  warmup: number,
  reps: number,
): { fwd: [number, number]; fb: [number, number] } {
  const rng = new Rng(7);
  const x = tf.variable(tf.tensor(rng.normalArray(xShape.reduce((a, b) => a * b, 1)), xShape));
  const outShape = tf.tidy(() => forward(x).shape);
  const R = tf.tensor(rng.normalArray(outShape.reduce((a, b) => a * b, 1)), outShape);
  const vars = [x, ...m.trainableVariables()];
  const fwd = timeIt(() => tf.tidy(() => void forward(x).dataSync()), warmup, reps);
  const fb = timeIt(
    () =>
      tf.tidy(() => {
        // Every backend benched here runs its kernels synchronously, so reading the loss is enough.
        // Reading each gradient too (as an earlier version did) would also hand its storage out
        // (dataSync returns the backend's own array), which keeps moelab-cpu from recycling it:
        // that measured allocation and garbage collection, not compute (~10% of the sigma-MoE
        // row). The anchor does not read its gradients either.
        const { value } = tf.variableGrads(() => tf.sum(tf.mul(forward(x), R)) as tf.Scalar, vars);
        value.dataSync();
      }),
    warmup,
    reps,
  );
  x.dispose();
  R.dispose();
  return { fwd, fb };
}

const ffnSpec = (ffn: NodeSpec): NodeSpec => ({ type: 'transformer', attention: { type: 'mha', heads: 4 }, ffn });

export function runBench(o: BenchOptions = {}, registry: Registry = createDefaultRegistry()): { rows: Row[]; peak: number } {
  const log = o.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const warmup = o.quick ? 1 : 2;
  const reps = o.quick ? 3 : 5;
  const rows: Row[] = [];
  let peak = Number.NaN;
  const want = (group: string, name: string) => !o.only || group === 'peak' || o.only.some((s) => `${group} ${name}`.toLowerCase().includes(s.toLowerCase()));
  const add = (
    group: string,
    name: string,
    shape: string,
    flops: number,
    fwd: [number, number] | null,
    fb: [number, number] | null,
    extra: Record<string, unknown> = {},
  ) => {
    const gf = (ms: number | undefined, mult: number) => (ms ? (mult * flops) / (ms / 1e3) / 1e9 : null);
    const row: Row = {
      group,
      name,
      shape,
      gflop_fwd: flops / 1e9,
      gflop_fwdbwd: (3 * flops) / 1e9,
      fwd_ms: fwd?.[0] ?? null,
      fwd_ms_min: fwd?.[1] ?? null,
      fwdbwd_ms: fb?.[0] ?? null,
      fwdbwd_ms_min: fb?.[1] ?? null,
      gflops_fwd: gf(fwd?.[0], 1),
      gflops_fwdbwd: gf(fb?.[0], 3),
      gflops_fwd_best: gf(fwd?.[1], 1),
      gflops_fwdbwd_best: gf(fb?.[1], 3),
      pct_peak_fwd: null,
      pct_peak_fwdbwd: null,
      backend: tf.getBackend(),
      samples: lastSamples,
      ...extra,
    };
    if (Number.isFinite(peak)) {
      row.pct_peak_fwd = row.gflops_fwd ? (100 * row.gflops_fwd) / peak : null;
      row.pct_peak_fwdbwd = row.gflops_fwdbwd ? (100 * row.gflops_fwdbwd) / peak : null;
    }
    // MoE rows: useful GFLOP/s as a fraction of the dense FFN's in this same run (when it ran).
    const dense = typeof extra.dense === 'string' ? rows.find((r) => r.name === extra.dense) : undefined;
    if (dense?.gflops_fwdbwd && row.gflops_fwdbwd) row.vs_dense_fwdbwd = row.gflops_fwdbwd / dense.gflops_fwdbwd;
    // Attention-mixture rows: time over the MHA row's in this same run (and per expert for soft mixtures).
    const mha = typeof extra.mha === 'string' ? rows.find((r) => r.name === extra.mha) : undefined;
    if (mha?.fwd_ms && row.fwd_ms) row.vs_mha_fwd = row.fwd_ms / mha.fwd_ms;
    if (mha?.fwdbwd_ms && row.fwdbwd_ms) {
      const ratio = row.fwdbwd_ms / mha.fwdbwd_ms;
      row.vs_mha_fwdbwd = ratio;
      if (typeof extra.experts === 'number') row.vs_n_mha_fwdbwd = ratio / extra.experts;
    }
    rows.push(row);
    const vsDense =
      typeof row.vs_dense_fwdbwd === 'number'
        ? `  ${row.vs_dense_fwdbwd.toFixed(2)}x dense`
        : typeof row.vs_mha_fwdbwd === 'number'
          ? `  ${row.vs_mha_fwdbwd.toFixed(2)}x MHA${typeof row.vs_n_mha_fwdbwd === 'number' ? ` (${row.vs_n_mha_fwdbwd.toFixed(2)}x N·MHA)` : ''}`
          : '';
    log(
      `${group.padEnd(6)} ${name.padEnd(40)} fwd ${fwd ? fwd[0].toFixed(1).padStart(8) : '       -'} ms  fwd+bwd ${fb ? fb[0].toFixed(1).padStart(8) : '       -'} ms  ${(row.gflops_fwdbwd ?? row.gflops_fwd ?? 0).toFixed(1)} GFLOP/s${vsDense}`,
    );
  };

  const skipped: { group: string; name: string; reason: string }[] = [];
  // A row that cannot run here (e.g. out of wasm memory) is reported and skipped; the others go on.
  const attempt = (group: string, name: string, fn: () => void) => {
    if (!want(group, name)) return;
    try {
      tf.tidy(fn);
    } catch (e) {
      const reason = (e as Error).message.split('\n')[0]!;
      skipped.push({ group, name, reason });
      log(`${group.padEnd(6)} ${name.padEnd(40)} skipped: ${reason}`);
    }
  };

  // Peak sgemm.
  for (const n of [2048, 1024]) {
    const rng = new Rng(n);
    const a = tf.tensor2d(rng.normalArray(n * n), [n, n]);
    const b = tf.tensor2d(rng.normalArray(n * n), [n, n]);
    // The anchor's statistic for these rows: two more warm-up runs than the layer rows (the first
    // calls of a run fault in the output's pages and wake the pool), then the median of all reps.
    // Like the anchor (torch.mm into a preallocated output) the row times the product, not a copy
    // of it: reading one element is the sync point (it waits for an asynchronous backend's queue).
    // Reading all of it measured the host's allocation of a fresh n x n array on backends whose
    // dataSync copies (moelab-wasm, tfjs wasm; not moelab-cpu, which hands out its own array):
    // 10-13 ms of moelab-wasm's ~45 ms at 1024^3 on this machine, where a page fault is slow.
    const t = timeIt(() => tf.tidy(() => void tf.slice(tf.matMul(a, b), [n - 1, n - 1], [1, 1]).dataSync()), warmup + 2, reps);
    if (n === 2048) peak = (2 * n ** 3) / (t[0] / 1e3) / 1e9;
    add('peak', `sgemm ${n}^3`, `${n}x${n} @ ${n}x${n}`, 2 * n ** 3, t, null);
    a.dispose();
    b.dispose();
  }

  const B = 16;
  const S = 256;
  const d = 256;
  const T = B * S;
  const layer = (ffn: NodeSpec) => {
    const block = buildModel<Module & { ffn: Module & { forward(x: tf.Tensor, ctx: unknown, s?: unknown): tf.Tensor } }>(
      { type: 'transformer-lm', vocabSize: 256, dModel: d, contextLength: S, stack: { groupSize: 1, repeats: 1 }, block: ffnSpec(ffn) } as NodeSpec,
      registry,
      0,
    ) as unknown as { layers: { ffn: Module & { forward(x: tf.Tensor, ctx: unknown): tf.Tensor } }[] };
    return block.layers[0]!.ffn;
  };
  // An E-expert MoE FFN with a top-k softmax router and no auxiliary losses.
  const topkMoE = (E: number, k: number, expert: NodeSpec): NodeSpec => ({
    type: 'moe',
    experts: E,
    router: { type: 'softmax-topk', k, balanceCoef: 0, zLossCoef: 0 },
    expert,
  });
  // Training-mode forwards without the routing statistics: the trainer computes those only every
  // `statsEvery` steps, and the anchor computes none.
  const ctxFor = () => forwardContext(new Rng(0), true, { stats: false });

  if (want('ffn', 'a dense FFN relu')) {
    const f = layer({ type: 'dense', hidden: 1024, activation: 'relu' });
    const r = benchModule(f, (x) => f.forward(x, ctxFor()), [T, d], warmup, reps);
    add('ffn', 'a dense FFN relu', `T=${T} d=${d} dff=1024`, 4 * T * d * 1024, r.fwd, r.fb);
  }
  for (const [E, dff, k] of [
    [8, 1024, 2],
    [64, 128, 4],
  ] as const) {
    const name = `b softmax-topk loop E${E}x${dff} k${k}`;
    if (!want('moe', name)) continue;
    const f = layer(topkMoE(E, k, { type: 'mlp', hidden: dff, activation: 'relu' }));
    const r = benchModule(f, (x) => f.forward(x, ctxFor()), [T, d], warmup, reps);
    add('moe', name, `T=${T} d=${d} E=${E} dff=${dff} k=${k}`, 2 * T * d * E + 4 * T * k * d * dff, r.fwd, r.fb, { dense: 'a dense FFN relu' });
  }
  // Gated (SwiGLU) experts, Mixtral / OLMoE / Qwen-MoE style, each beside a dense SwiGLU FFN of the
  // same active FLOPs (hidden = k x expert hidden): 3 GEMMs of 2 T d h each.
  const hasGlu = registry.has('expert', 'glu');
  for (const [E, dff, k] of [
    [8, 1024, 2],
    [64, 128, 4],
  ] as const) {
    const hidden = k * dff;
    const denseName = `f dense SwiGLU FFN h${hidden}`;
    if (want('glu', denseName)) {
      const f = layer({ type: 'dense', hidden, activation: 'silu', glu: true });
      const r = benchModule(f, (x) => f.forward(x, ctxFor()), [T, d], warmup, reps);
      add('glu', denseName, `T=${T} d=${d} h=${hidden}`, 6 * T * d * hidden, r.fwd, r.fb);
    }
    const name = `f SwiGLU MoE topk E${E}x${dff} k${k}`;
    if (!hasGlu || !want('glu', name)) continue;
    const f = layer(topkMoE(E, k, { type: 'glu', hidden: dff, activation: 'silu' }));
    const r = benchModule(f, (x) => f.forward(x, ctxFor()), [T, d], warmup, reps);
    add('glu', name, `T=${T} d=${d} E=${E} dff=${dff} k=${k}`, 2 * T * d * E + 6 * T * k * d * dff, r.fwd, r.fb, { dense: denseName });
  }
  const hasSigma = registry.has('ffn', 'sigma-moe');
  const hasSwitchHead = registry.has('attention', 'switchhead');
  const sigmaFFN = { type: 'sigma-moe', experts: 64, k: 4, expertSize: 128 };
  const sigmaFlops = 2 * T * d * 64 + 4 * T * 4 * d * 128;
  if (hasSigma && want('sigma', 'c sigma-MoE sorted E64x128 k4')) {
    const f = layer(sigmaFFN);
    const r = benchModule(f, (x) => f.forward(x, ctxFor()), [B, S, d], warmup, reps);
    add('sigma', 'c sigma-MoE sorted E64x128 k4', `T=${T} d=${d} E=64 G=128 k=4`, sigmaFlops, r.fwd, r.fb, { dense: 'a dense FFN relu' });
  }
  const hasMixtures = registry.has('attention', 'bam-soft-moa') && registry.has('attention', 'moa');
  const mixtureRows = ['d BAM soft-MoA KV-experts N4 h4', 'd BAM soft-MoA KV-sharing N4 h4', 'd MoA E8 k4 dh64'];
  // The mixture rows are reported against the MHA row, so it runs whenever one of them does.
  if (want('attn', 'd MHA h4') || (hasMixtures && mixtureRows.some((n) => want('attn', n)))) {
    const rng = new Rng(3);
    const att = new MultiHeadAttention(d, { heads: 4 }, rng);
    const r = benchModule(att, (x) => att.forward(x, ctxFor()), [B, S, d], warmup, reps);
    add('attn', 'd MHA h4', `B=${B} S=${S} d=${d} H=4 dh=64`, 8 * T * d * d + 4 * B * S * S * d, r.fwd, r.fb);
  }
  const switchheadFlops = 4 * T * d * 256 + 2 * T * d * 4 * 2 * 64 + 2 * T * 4 * 2 * 64 * d + 4 * T * d * 4 * 8 + 4 * B * 4 * S * S * 64;
  if (hasSwitchHead && want('attn', 'd SwitchHead sorted E8 k2')) {
    const att = buildModel<{ layers: { attention: Module & { forward(x: tf.Tensor, ctx: unknown): tf.Tensor } }[] }>(
      {
        type: 'transformer-lm',
        vocabSize: 256,
        dModel: d,
        contextLength: S,
        stack: { groupSize: 1, repeats: 1 },
        block: { type: 'transformer', attention: { type: 'switchhead', heads: 4, headDim: 64, experts: 8, k: 2 }, ffn: { type: 'dense', hidden: 8 } },
      },
      registry,
      0,
    ).layers[0]!.attention;
    const r = benchModule(att, (x) => att.forward(x, ctxFor()), [B, S, d], warmup, reps);
    add('attn', 'd SwitchHead sorted E8 k2', `B=${B} S=${S} d=${d} H=4 E=8 k=2`, switchheadFlops, r.fwd, r.fb);
  }

  // Attention mixtures at the same shape (4 heads x 64 per expert): one layer built through the registry.
  const attentionLayer = (spec: NodeSpec) =>
    buildModel<{ layers: { attention: Module & { forward(x: tf.Tensor, ctx: unknown): tf.Tensor } }[] }>(
      {
        type: 'transformer-lm',
        vocabSize: 256,
        dModel: d,
        contextLength: S,
        stack: { groupSize: 1, repeats: 1 },
        block: { type: 'transformer', attention: spec, ffn: { type: 'dense', hidden: 8 } },
      },
      registry,
      0,
    ).layers[0]!.attention;
  const N = 4;
  const mhaFlops = 8 * T * d * d + 4 * B * S * S * d;
  const mixtures: [string, NodeSpec, number, number | undefined][] = [
    // N full attentions + the router (2 T d N).
    [mixtureRows[0]!, { type: 'bam-soft-moa', experts: N, heads: 4, kv: 'experts' }, N * mhaFlops + 2 * T * d * N, N],
    // N x (Q, O projections + mixing) + one K, V projection + the router.
    [mixtureRows[1]!, { type: 'bam-soft-moa', experts: N, heads: 4, kv: 'shared' }, N * (4 * T * d * d + 4 * B * S * S * d) + 4 * T * d * d + 2 * T * d * N, N],
    // Router 2 T d E, shared K and V 4 T d dh, k query + output experts 4 T k d dh, mixing 4 B k S² dh.
    [mixtureRows[2]!, { type: 'moa', experts: 8, k: 4, headDim: 64 }, 2 * T * d * 8 + 4 * T * d * 64 + 4 * T * 4 * d * 64 + 4 * B * 4 * S * S * 64, undefined],
  ];
  for (const [name, spec, flops, experts] of mixtures) {
    if (!hasMixtures || !want('attn', name)) continue;
    const att = attentionLayer(spec);
    const r = benchModule(att, (x) => att.forward(x, ctxFor()), [B, S, d], warmup, reps);
    add('attn', name, `B=${B} S=${S} d=${d} H=4 dh=64`, flops, r.fwd, r.fb, { mha: 'd MHA h4', ...(experts ? { experts } : {}) });
  }

  // Whole training steps of a 4-layer LM (AdamW), tokens/s.
  const lmVariants: [string, NodeSpec, number][] = [['e LM dense FFN + MHA', { type: 'dense', hidden: 1024, activation: 'relu' }, 4 * T * d * 1024]];
  const lmBlocks: Record<string, NodeSpec> = {};
  lmBlocks['e LM dense FFN + MHA'] = { type: 'transformer', attention: { type: 'mha', heads: 4 }, ffn: lmVariants[0]![1] };
  if (hasSigma) {
    lmVariants.push(['e LM sigma-MoE sorted + MHA', sigmaFFN, sigmaFlops]);
    lmBlocks['e LM sigma-MoE sorted + MHA'] = { type: 'transformer', attention: { type: 'mha', heads: 4 }, ffn: sigmaFFN };
  }
  if (hasSigma && hasSwitchHead) {
    // MoEUT: peri-LN, SwitchHead attention (its FLOPs replace MHA's below) and sigma-MoE.
    lmVariants.push(['e LM MoEUT sigma+SwitchHead(sorted)', sigmaFFN, sigmaFlops + switchheadFlops - (8 * T * d * d + 4 * B * S * S * d)]);
    lmBlocks['e LM MoEUT sigma+SwitchHead(sorted)'] = {
      type: 'transformer',
      norm: 'peri',
      attention: { type: 'switchhead', heads: 4, headDim: 64, experts: 8, k: 2 },
      ffn: sigmaFFN,
    };
  }
  if (hasGlu) {
    // Mixtral-style block: RMSNorm, MHA, 8 SwiGLU experts, top-2 (balancing loss on, as in training).
    const name = 'e LM SwiGLU-MoE E8x512 k2 + MHA (Mixtral-style)';
    const ffn: NodeSpec = { type: 'moe', experts: 8, router: { type: 'softmax-topk', k: 2 }, expert: { type: 'glu', hidden: 512, activation: 'silu' } };
    lmVariants.push([name, ffn, 2 * T * d * 8 + 6 * T * 2 * d * 512]);
    lmBlocks[name] = { type: 'transformer', normType: { type: 'rmsnorm' }, attention: { type: 'mha', heads: 4 }, ffn };
  }
  for (const [name, , ffnFlops] of lmVariants)
    attempt('lm', name, () => {
      const spec = { type: 'transformer-lm', vocabSize: 256, dModel: d, contextLength: S, stack: { groupSize: 4, repeats: 1 }, block: lmBlocks[name]! };
      const model = buildModel<Module & LanguageModel>(spec, registry, 0);
      const data = { batch: (rng: Rng, b: number, s: number) => Int32Array.from({ length: b * (s + 1) }, () => rng.int(256)) };
      const tr = new Trainer(model, data, { batchSize: B, seqLen: S, steps: 1000, lr: 1e-3, weightDecay: 0.1, warmup: 0, clip: 0 });
      const lmReps = o.quick ? 2 : 3;
      const tokens = tf.tensor2d(data.batch(new Rng(11), B, S - 1), [B, S], 'int32');
      const fwd = timeIt(() => tf.tidy(() => void model.forward(tokens, forwardContext(new Rng(0), false)).dataSync()), 1, lmReps);
      const step = timeIt(() => void tr.trainStep(), 1, lmReps);
      const flops = 4 * (8 * T * d * d + 4 * B * S * S * d + ffnFlops) + 2 * T * d * 256;
      add('lm', name, `V=256 d=${d} L=4 B=${B} S=${S} AdamW`, flops, fwd, step, {
        tokens_per_s_train: T / (step[0] / 1e3),
        tokens_per_s_fwd: T / (fwd[0] / 1e3),
        params: model.parameterCount(),
      });
      tr.optimizer.dispose();
      model.dispose();
    });

  // Generation: tokens/s of the KV-cached decoder (prefill once, one token per step; past the context
  // the window slides by half) against re-running the window per token. Runs alternate (cached,
  // uncached, cached, ...) so that a change in the machine's load hits both; medians per path.
  // fwd_ms is ms per new token of the cached path; the FLOPs are the model's forward FLOPs per token
  // at the context length (an upper bound for one cached step).
  const gen = o.generate ?? GENERATE_WORKLOAD;
  const genName = generateRowName(gen);
  attempt('gen', genName, () => {
    const spec = registry.preset(gen.preset).spec as Record<string, unknown>;
    const model = buildModel<Module & LanguageModel>({ ...spec, contextLength: gen.contextLength } as unknown as NodeSpec, registry, 0);
    const prompt = Array.from({ length: gen.prompt }, (_, i) => (i * 37 + 11) % model.vocabSize);
    const run = (cache: boolean, n = gen.newTokens) => {
      const t0 = performance.now();
      generateTokens(model, prompt, { maxNewTokens: n, temperature: 0, cache });
      return performance.now() - t0;
    };
    run(true, Math.min(16, gen.newTokens)); // warm-up: kernels, RoPE tables
    const cached: number[] = [];
    const uncached: number[] = [];
    const rounds = o.quick ? 1 : 2;
    for (let r = 0; r < rounds; r++) {
      cached.push(run(true));
      uncached.push(run(false));
    }
    cached.push(run(true));
    lastSamples = cached.length;
    const [c, cMin] = stats(cached);
    const [u, uMin] = stats(uncached);
    const perToken = (ms: number) => ms / gen.newTokens;
    const flops = (model as Module).flopsPerToken(gen.contextLength);
    add(
      'gen',
      genName,
      `preset=${gen.preset} prompt=${gen.prompt} new=${gen.newTokens} ctx=${gen.contextLength} B=1 greedy`,
      flops,
      [perToken(c), perToken(cMin)],
      null,
      {
        tokens_per_s_cached: gen.newTokens / (c / 1e3),
        tokens_per_s_uncached: gen.newTokens / (u / 1e3),
        uncached_ms_per_token: perToken(u),
        uncached_ms_per_token_min: perToken(uMin),
        uncached_samples: uncached.length,
        speedup_cached: u / c,
        params: model.parameterCount(),
      },
    );
    log(
      `${'gen'.padEnd(6)} ${genName.padEnd(40)} cached ${(gen.newTokens / (c / 1e3)).toFixed(1)} tok/s  uncached ${(gen.newTokens / (u / 1e3)).toFixed(1)} tok/s  speedup ${(u / c).toFixed(1)}x`,
    );
    model.dispose();
  });

  // Packed experts: the same generation with the routed experts quantized to 4 bits and run packed
  // (moelab-cpu's MoelabMoePacked kernel dequantizes inside the expert GEMMs) against the float
  // model; runs alternate. Resident expert bytes: float32 weights vs codes + scales + zero points.
  const qName = `f generate ${gen.preset} experts int4 packed vs fp32`;
  attempt('gen', qName, () => {
    if (!hasKernel(MOE_PACKED_KERNEL)) throw new Error(`the ${tf.getBackend()} backend has no packed expert kernel (moelab-cpu has)`);
    const spec = { ...(registry.preset(gen.preset).spec as Record<string, unknown>), contextLength: gen.contextLength } as unknown as NodeSpec;
    const float = buildModel<Module & LanguageModel>(spec, registry, 0);
    const q = quantizeModel(float, { bits: 4 });
    const { tensors, metadata } = quantizedTensors(q);
    const packed = buildModel<Module & LanguageModel>(spec, registry, 0);
    loadQuantizedState(packed, readSafetensors(writeSafetensors(tensors, metadata)), { packed: true });
    const prompt = Array.from({ length: gen.prompt }, (_, i) => (i * 37 + 11) % float.vocabSize);
    const run = (model: Module & LanguageModel, n = gen.newTokens) => {
      const t0 = performance.now();
      generateTokens(model, prompt, { maxNewTokens: n, temperature: 0, cache: true });
      return performance.now() - t0;
    };
    run(float, 16);
    run(packed, 16);
    const fp: number[] = [];
    const pk: number[] = [];
    for (let r = 0; r < (o.quick ? 2 : 3); r++) {
      fp.push(run(float));
      pk.push(run(packed));
    }
    lastSamples = pk.length;
    const [f] = stats(fp);
    const [p, pMin] = stats(pk);
    const size = quantizedSize(q.packed);
    add(
      'gen',
      qName,
      `preset=${gen.preset} prompt=${gen.prompt} new=${gen.newTokens} ctx=${gen.contextLength} B=1 greedy, experts 4-bit channel-wise`,
      (packed as Module).flopsPerToken(gen.contextLength),
      [p / gen.newTokens, pMin / gen.newTokens],
      null,
      {
        tokens_per_s_packed: gen.newTokens / (p / 1e3),
        tokens_per_s_fp32: gen.newTokens / (f / 1e3),
        speed_vs_fp32: f / p,
        expert_bytes_fp32: size.floatBytes,
        expert_bytes_packed: size.packedBytes,
        expert_memory_ratio: size.packedBytes / size.floatBytes,
      },
    );
    log(
      `${'gen'.padEnd(6)} ${qName.padEnd(40)} packed ${(gen.newTokens / (p / 1e3)).toFixed(1)} tok/s  fp32 ${(gen.newTokens / (f / 1e3)).toFixed(1)} tok/s  ${(f / p).toFixed(2)}x speed, ${((100 * size.packedBytes) / size.floatBytes).toFixed(1)}% of the expert memory`,
    );
    float.dispose();
    packed.dispose();
  });

  const out = {
    environment: {
      tool: 'moelab bench',
      backend: tf.getBackend(),
      node: process.version,
      cpus: os.cpus().length,
      cpu_model: os.cpus()[0]?.model,
      platform: `${os.platform()} ${os.arch()}`,
    },
    settings: { warmup, reps, quick: !!o.quick },
    peak_sgemm_gflops: peak,
    rows,
    skipped,
  };
  if (o.json) writeFileAtomic(o.json, `${JSON.stringify(out, null, 2)}\n`);
  return { rows, peak };
}

export interface BenchBackendsOptions extends BenchOptions {
  /** 'auto' (every available backend), or a comma-separated list of backend names. */
  backends?: string;
}

const BENCH_BACKENDS = ['tensorflow', 'moelab-cpu', 'moelab-wasm', 'wasm', 'cpu'];

/** The JSON path for one backend: the first one gets `json` itself, the others `name.<backend>.json`. */
export function benchJsonPath(json: string, backend: string, first: boolean): string {
  if (first) return json;
  return json.endsWith('.json') ? `${json.slice(0, -5)}.${backend}.json` : `${json}.${backend}.json`;
}

/** Run the bench on each requested backend that is available here; returns what ran and what was skipped. */
export async function runBenchBackends(o: BenchBackendsOptions = {}): Promise<{ ran: string[]; skipped: { name: string; reason: string }[] }> {
  const log = o.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const request = o.backends ?? 'auto';
  const names =
    request === 'auto'
      ? BENCH_BACKENDS
      : request
          .split(',')
          .map((b) => b.trim())
          .filter(Boolean);
  const registry = createDefaultRegistry();
  const ran: string[] = [];
  const skipped: { name: string; reason: string }[] = [];
  for (const name of names) {
    try {
      const choice = await chooseBackend(name);
      log(`# backend ${choice.name}: ${choice.reason}`);
    } catch (e) {
      const reason = (e as Error).message.split('\n')[0]!;
      skipped.push({ name, reason });
      log(`# backend ${name} skipped: ${reason}`);
      continue;
    }
    const json = o.json ? benchJsonPath(o.json, name, ran.length === 0) : undefined;
    runBench({ ...o, json }, registry);
    if (json) log(`# wrote ${json}`);
    ran.push(name);
  }
  if (ran.length === 0) throw new MoelabError(`no backend could run the bench: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`, '--backend');
  return { ran, skipped };
}
