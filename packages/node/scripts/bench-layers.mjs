/**
 * What the MoE A/B and profile scripts of this folder share: moelab-cpu started, the `moelab bench`
 * layer rows they time (T 4096 tokens, d 256: the dense ReLU FFN of 1024, softmax top-k and
 * sigma-MoE with 64 experts of 128, top-4) with their useful FLOPs (the bench's convention), one
 * forward+backward step, and the interleaved rounds that make a busy machine slow every arm alike.
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

export const DENSE_FFN = { type: 'dense', hidden: 1024, activation: 'relu' };
export const TOPK_E64 = {
  type: 'moe',
  experts: 64,
  router: { type: 'softmax-topk', k: 4, balanceCoef: 0, zLossCoef: 0 },
  expert: { type: 'mlp', hidden: 128, activation: 'relu' },
};
export const SIGMA_E64 = { type: 'sigma-moe', experts: 64, k: 4, expertSize: 128 };
export const DENSE_FLOPS = 4 * T * d * 1024;
/** Router scores plus the k experts' two GEMMs per token. */
export const E64_FLOPS = 2 * T * d * 64 + 4 * T * 4 * d * 128;

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
