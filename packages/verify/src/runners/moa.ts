/**
 * Runner for kind `moa` (MoA, Mixture of Attention Heads, arXiv 2210.05144; official code
 * github.com/yikangshen/MoA, `moa_layer/moa_attention.py` with `parallel_linear/moe.py` as `q_proj`).
 * Builds `attention: moa` through the registry, loads `q_proj.w_gate`, `q_proj.experts.w`,
 * `q_proj.output_experts.w`, `k_proj.weight`, `v_proj.weight` by name and runs it in training mode
 * (self-attention, causal mask):
 *
 *   out_t = Σ_{e ∈ TopK(p_t)} p_te · softmax_s((x_t W_q^e)·K_s/√d_h + M_ts) V_s W_o^e,   p_t = softmax(x_t W_g),
 *   loss_main = Σ out ⊙ R,   aux_loss = cv·CV² + switch·E·Σ P̂ f̂ + z·mean(logsumexp²),
 *
 * and the gradients of `loss_main` and `aux_loss` w.r.t. every parameter and the input.
 */
import { type AttentionModule, buildNode, forwardContext, loadState, type Registry, Rng, tf } from '@moelab/core';
import type { MixtureOfAttentionHeads } from '@moelab/attention';
import { configNumber, type Fixture, type FixtureOutputs, fixtureFloatTensor, fixtureInputVariable, fixtureParams, gradientsInto, values } from '../fixture.js';

export function moaRunner(fx: Fixture, registry: Registry): FixtureOutputs {
  const att = buildNode<AttentionModule & MixtureOfAttentionHeads>(
    registry,
    'attention',
    {
      type: 'moa',
      experts: configNumber(fx, 'num_expert'),
      k: configNumber(fx, 'num_heads_k'),
      headDim: configNumber(fx, 'head_dim'),
      router: {
        noisy: fx.doc.config.noisy_gating === true,
        sampleTopk: configNumber(fx, 'sample_topk', 0),
        aux: { cv: configNumber(fx, 'cvloss', 0), switch: configNumber(fx, 'switchloss', 0), z: configNumber(fx, 'zloss', 0) },
      },
    },
    '$',
    0,
    { dModel: configNumber(fx, 'embed_dim') },
  );
  att.assignPaths();
  loadState(att, fixtureParams(fx), { source: fx.doc.name });
  const x = fixtureInputVariable(fx, 'x');
  const R = fixtureFloatTensor(fx, 'input.R');
  const run = () => {
    const ctx = forwardContext(new Rng(0), true);
    const y = att.forward(x, ctx);
    const aux = ctx.aux.reduce<tf.Tensor>((s, a) => tf.add(s, tf.mul(a.value, a.coef)), tf.scalar(0)) as tf.Scalar;
    return { y, aux };
  };
  const out: FixtureOutputs = new Map();
  tf.tidy(() => {
    const r = run();
    out.set('expected.out', values(r.y));
    out.set('expected.loss_main', values(tf.sum(tf.mul(r.y, R))));
    out.set('expected.aux_loss', values(r.aux));
  });
  const vars: [string, tf.Variable][] = [...att.namedParameters(), ['x', x]];
  gradientsInto(out, 'grad_main', () => tf.sum(tf.mul(run().y, R)) as tf.Scalar, vars);
  gradientsInto(out, 'grad_aux', () => run().aux, vars);
  att.dispose();
  tf.dispose([x, R]);
  return out;
}
