/**
 * What the MoE A/B and profile scripts share (this folder's, and the repository's scripts/
 * profile-wasm.mjs and wasm-ab.mjs): moelab-cpu started, the `moelab bench` layer rows they time
 * (T 4096 tokens, d 256: the dense ReLU FFN of 1024, softmax top-k with 8 experts of 1024, top-2, and
 * 64 of 128, top-4, their SwiGLU versions, sigma-MoE with 64 of 128) with their useful forward FLOPs
 * (the bench's convention: a forward + backward step is 3x), one forward+backward step, and the
 * interleaved rounds that make a busy machine slow every arm alike.
 */
import { buildModel, forwardContext, Rng, tf } from '@moelab/core';
import { registerMoelabCpuBackend } from '@moelab/kernels-cpu';
import { createDefaultRegistry } from '@moelab/node';

/** Registers moelab-cpu and selects it; exits with a one-line message (naming `script`) where it cannot load. */
export async function startMoelabCpu(script) {
  const status = registerMoelabCpuBackend(tf);
  if (!status.available) {
    console.error(`${script}: moelab-cpu is not available (${status.reason})`);
    process.exit(1);
  }
  await tf.setBackend('moelab-cpu');
  return status;
}

export const S = 256;
export const d = 256;
export const T = 16 * S;

/** A top-k MoE row: router scores (2 T d E) plus each token's k experts (two GEMMs, three for GLU). */
const moeRow = (name, E, k, type, hidden, activation) => ({
  name,
  ffn: { type: 'moe', experts: E, router: { type: 'softmax-topk', k, balanceCoef: 0, zLossCoef: 0 }, expert: { type, hidden, activation } },
  flops: 2 * T * d * E + (type === 'glu' ? 6 : 4) * T * k * d * hidden,
});

/** The bench's feed-forward rows by short key: name, spec and useful forward FLOPs. */
export const FFN_ROWS = {
  dense: { name: 'a dense FFN relu', ffn: { type: 'dense', hidden: 1024, activation: 'relu' }, flops: 4 * T * d * 1024 },
  e8: moeRow('b softmax-topk loop E8x1024 k2', 8, 2, 'mlp', 1024, 'relu'),
  e64: moeRow('b softmax-topk loop E64x128 k4', 64, 4, 'mlp', 128, 'relu'),
  glu8: moeRow('f SwiGLU MoE topk E8x1024 k2', 8, 2, 'glu', 1024, 'silu'),
  glu64: moeRow('f SwiGLU MoE topk E64x128 k4', 64, 4, 'glu', 128, 'silu'),
};

export const DENSE_FFN = FFN_ROWS.dense.ffn;
export const TOPK_E64 = FFN_ROWS.e64.ffn;
export const SIGMA_E64 = { type: 'sigma-moe', experts: 64, k: 4, expertSize: 128 };
export const DENSE_FLOPS = FFN_ROWS.dense.flops;
export const E64_FLOPS = FFN_ROWS.e64.flops;

const registry = createDefaultRegistry();
/** The feed-forward module `ffn` as the bench builds it: layer 0 of a one-layer LM. */
export const benchLayer = (ffn) =>
  buildModel(
    {
      type: 'transformer-lm',
      vocabSize: 256,
      dModel: d,
      contextLength: S,
      stack: { groupSize: 1, repeats: 1 },
      block: { type: 'transformer', attention: { type: 'mha', heads: 4 }, ffn },
    },
    registry,
    0,
  ).layers[0].ffn;

/** One training forward (statistics off) of `f` on `x` and the gradient of sum(f(x) * R) w.r.t. `vars`. */
export function forwardBackward(f, x, R, vars) {
  tf.tidy(() => {
    const loss = () => tf.sum(tf.mul(f.forward(x, forwardContext(new Rng(0), true, { stats: false })), R));
    tf.variableGrads(loss, vars).value.dataSync();
  });
}

/** Runs `run(name)` for every name `rounds` times, the order reversed every other round. */
export function interleave(names, rounds, run) {
  for (let r = 0; r < rounds; r++) for (const n of r % 2 ? [...names].reverse() : names) run(n);
}

export const median = (v) => [...v].sort((p, q) => p - q)[v.length >> 1];
