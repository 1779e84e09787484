/**
 * Runner for kind `moeut_lm` (a whole MoEUT language model, arXiv:2405.16039; official code
 * github.com/RobertCsordas/moeut). Builds the model from the official configuration with
 * `moeutSpecFromOfficialConfig` (@moelab/attention) and loads the fixture's parameters, which carry the
 * official `MoEUTLM.state_dict()` names, strictly: that every name and shape matches is part of the check.
 * Computes, in training mode,
 *
 *   logits,   loss_main = Σ logits ⊙ R,   reg_loss = Σ_aux coef · aux,   ce_loss = CE(logits[:, :-1], tokens[:, 1:]),
 *
 * and the gradients of `loss_main` and `reg_loss` w.r.t. every parameter. Needs the routers, experts and
 * attention plugins in the registry.
 */
import { buildModel, crossEntropy, forwardContext, type LanguageModel, loadState, type Module, type Registry, Rng, tf } from '@moelab/core';
import { moeutSpecFromOfficialConfig } from '@moelab/attention';
import { type Fixture, type FixtureOutputs, fixtureFloatTensor, fixtureParams, fixtureTensor, gradientsInto, values } from '../fixture.js';

export function moeutLMRunner(fx: Fixture, registry: Registry): FixtureOutputs {
  const model = buildModel<Module & LanguageModel>(moeutSpecFromOfficialConfig(fx.doc.config), registry);
  loadState(model, fixtureParams(fx), { source: fx.doc.name });
  const tok = fixtureTensor(fx, 'input.tokens');
  const tokens = tf.tensor(Int32Array.from(tok.data), tok.shape, 'int32');
  const R = fixtureFloatTensor(fx, 'input.R');
  const run = () => {
    const fctx = forwardContext(new Rng(0), true);
    const logits = model.forward(tokens, fctx);
    let reg: tf.Scalar = tf.scalar(0);
    for (const a of fctx.aux) reg = tf.add(reg, tf.mul(a.value, a.coef)) as tf.Scalar;
    return { logits, reg };
  };
  const out: FixtureOutputs = new Map();
  tf.tidy(() => {
    const { logits, reg } = run();
    const [B, T, V] = logits.shape;
    out.set('expected.logits', values(logits));
    out.set('expected.loss_main', values(tf.sum(tf.mul(logits, R))));
    out.set('expected.reg_loss', values(reg));
    const ce = crossEntropy(tf.slice(logits, [0, 0, 0], [B, T - 1, V]), tf.slice(tokens, [0, 1], [B, T - 1]));
    out.set('expected.ce_loss', values(ce));
  });
  const vars = model.namedParameters();
  gradientsInto(out, 'grad_main', () => tf.sum(tf.mul(run().logits, R)) as tf.Scalar, vars);
  gradientsInto(out, 'grad_aux', () => run().reg, vars);
  model.dispose();
  tf.dispose([tokens, R]);
  return out;
}
