/**
 * Runner for kind `switchhead` (SwitchHead attention, arXiv:2312.07987; official code
 * github.com/RobertCsordas/moeut). Builds `attention: switchhead` through the registry, loads
 * `q.weight`, `k.weight`, `v`, `o`, `sel_v`, `sel_o` by name and runs it in training mode on the
 * fixture's separate query / key / value sources:
 *
 *   out = Σ_h O_h(σ-gated by sel_o(q_src)) · softmax(Q_h K_hᵀ/√d) V_h(σ-gated by sel_v(k_src)),
 *   loss_main = Σ out ⊙ R,   reg_seq = reg_seq_o + reg_seq_v (the two entropy regularisers, unscaled),
 *
 * plus both selection logits and the gradients of `loss_main` and `reg_seq` w.r.t. every parameter and
 * input. With one expert (the dense-gated case) there is no selection and no regulariser.
 */
import { type AttentionModule, buildNode, forwardContext, loadState, MoelabError, type Registry, Rng, tf } from '@moelab/core';
import type { SwitchHead } from '@moelab/attention';
import { configNumber, type Fixture, type FixtureOutputs, fixtureFloatTensor, fixtureInputVariable, fixtureParams, gradientsInto, values } from '../fixture.js';

export function switchheadRunner(fx: Fixture, registry: Registry): FixtureOutputs {
  const E = configNumber(fx, 'n_experts');
  const att = buildNode<AttentionModule & SwitchHead>(
    registry,
    'attention',
    {
      type: 'switchhead',
      heads: configNumber(fx, 'n_heads'),
      headDim: configNumber(fx, 'd_head'),
      experts: E,
      k: E > 1 ? configNumber(fx, 'moe_k') : 1,
      rotateFraction: configNumber(fx, 'rotate_fraction', 0.5),
      ropeBase: configNumber(fx, 'rope_base', 10000),
      expertDropout: configNumber(fx, 'expert_dropout', 0),
      dropout: configNumber(fx, 'dropout', 0),
      balanceCoef: 1,
    },
    '$',
    0,
    { dModel: configNumber(fx, 'd_model') },
  );
  att.assignPaths();
  loadState(att, fixtureParams(fx), { source: fx.doc.name });
  const q = fixtureInputVariable(fx, 'q_src');
  const k = fixtureInputVariable(fx, 'k_src');
  const v = fixtureInputVariable(fx, 'v_src');
  const R = fixtureFloatTensor(fx, 'input.R');
  const run = () => {
    const fctx = forwardContext(new Rng(0), true);
    const y = att.forward(q, fctx, { q, k, v });
    att.finalizeForward(fctx);
    const o = fctx.aux.find((a) => a.name === 'att_entropy_o')?.value;
    const vr = fctx.aux.find((a) => a.name === 'att_entropy_v')?.value;
    return { y, o, v: vr };
  };
  const out: FixtureOutputs = new Map();
  tf.tidy(() => {
    const r = run();
    out.set('expected.out', values(r.y));
    out.set('expected.loss_main', values(tf.sum(tf.mul(r.y, R))));
    if (E > 1) {
      if (!r.o || !r.v) throw new MoelabError('SwitchHead produced no regulariser in training mode', fx.doc.name);
      out.set('expected.reg_seq_o', values(r.o));
      out.set('expected.reg_seq_v', values(r.v));
      out.set('expected.reg_seq', values(tf.add(r.o, r.v)));
      out.set('expected.v_sel_logits', values(att.selectionLogits(k, 'v')));
      out.set('expected.o_sel_logits', values(att.selectionLogits(q, 'o')));
    }
  });
  const vars: [string, tf.Variable][] = [...att.namedParameters(), ['q_src', q], ['k_src', k], ['v_src', v]];
  gradientsInto(out, 'grad_main', () => tf.sum(tf.mul(run().y, R)) as tf.Scalar, vars);
  if (E > 1)
    gradientsInto(
      out,
      'grad_aux',
      () => {
        const r = run();
        return tf.add(r.o!, r.v!) as tf.Scalar;
      },
      vars,
    );
  att.dispose();
  tf.dispose([q, k, v, R]);
  return out;
}
