/**
 * Runner for kind `sigma_moe` (σ-MoE feed-forward of MoEUT, arXiv:2405.16039; official code
 * github.com/RobertCsordas/moeut). Builds `ffn: sigma-moe` through the registry (the `sigma-topk` router
 * must be registered), loads the official parameter names (`expert_sel`, `keys`, `values`) and computes
 *
 *   out = Σ_{e ∈ topk(σ(W_sel s))} σ(W_sel s)_e · V_e act(K_e x),   loss_main = Σ out ⊙ R,
 *
 * the selection logits `W_sel s`, the entropy regulariser per sequence (`reg_seq`, MoEUT) and over all
 * tokens (`reg_global`), and the gradients of `loss_main` and `reg_seq` w.r.t. every parameter and both
 * inputs (`x`, `sel_input`).
 */
import { buildNode, type FeedForward, forwardContext, loadState, type Module, MoelabError, type Registry, Rng, tf } from '@moelab/core';
import type { SigmaMoELayer } from '@moelab/experts';
import { SigmaTopKRouter } from '@moelab/routers';
import {
  configNumber,
  type Fixture,
  type FixtureOutputs,
  fixtureFloatTensor,
  fixtureInputVariable,
  fixtureParams,
  gradientsInto,
  scalarValue,
  values,
} from '../fixture.js';

type Layer = SigmaMoELayer & FeedForward & Module;

export function sigmaMoERunner(fx: Fixture, registry: Registry): FixtureOutputs {
  const d = configNumber(fx, 'd_model');
  const build = (balance: 'sequence' | 'global') => {
    const layer = buildNode<Layer>(
      registry,
      'ffn',
      {
        type: 'sigma-moe',
        experts: configNumber(fx, 'n_experts'),
        k: configNumber(fx, 'k'),
        expertSize: configNumber(fx, 'expert_size'),
        activation: (fx.doc.config.activation as string) ?? 'relu',
        expertDropout: configNumber(fx, 'expert_dropout', 0),
        balance,
        balanceCoef: 1,
      },
      '$',
      0,
      { dModel: d },
    );
    layer.assignPaths();
    loadState(layer, fixtureParams(fx), { source: fx.doc.name });
    return layer;
  };
  const layer = build('sequence');
  const globalLayer = build('global');
  const router = layer.router;
  if (!(router instanceof SigmaTopKRouter)) throw new MoelabError('the sigma-moe layer is expected to route with sigma-topk', fx.doc.name);
  const x = fixtureInputVariable(fx, 'x');
  const s = fixtureInputVariable(fx, 'sel_input');
  const R = fixtureFloatTensor(fx, 'input.R');
  const out: FixtureOutputs = new Map();
  const run = (m: Layer) => {
    const fctx = forwardContext(new Rng(0), true);
    const y = m.forward(x, fctx, { routerInput: s });
    m.finalizeForward?.(fctx);
    const reg = fctx.aux.find((a) => a.name === 'entropy_balance');
    if (!reg) throw new MoelabError('the sigma-moe layer produced no entropy_balance regulariser in training mode');
    return { y, reg: reg.value };
  };
  tf.tidy(() => {
    const { y, reg } = run(layer);
    out.set('expected.out', values(y));
    out.set('expected.loss_main', scalarValue(tf.sum(tf.mul(y, R))));
    out.set('expected.reg_seq', scalarValue(reg));
    out.set('expected.reg_global', scalarValue(run(globalLayer).reg));
    out.set('expected.sel_logits', values(router.logits(tf.reshape(s, [-1, d]) as tf.Tensor2D)));
  });
  const vars: [string, tf.Variable][] = [...layer.namedParameters(), ['x', x], ['sel_input', s]];
  gradientsInto(out, 'grad_main', () => tf.sum(tf.mul(run(layer).y, R)) as tf.Scalar, vars);
  gradientsInto(out, 'grad_aux', () => run(layer).reg, vars);
  layer.dispose();
  globalLayer.dispose();
  tf.dispose([x, s, R]);
  return out;
}
