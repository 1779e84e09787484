/**
 * Runner for kind `smore_layer` (S'MoRE, arXiv 2504.06426; official code github.com/ZimpleX/SMoRE-LLM,
 * `SMoREFFN` in `peft/src/peft/tuners/hier_moe/layer.py` with the gates of
 * `model_moe/src/model_moe/moe/moe_gates.py`). Builds the `smore-linear` adapter through the registry
 * around a Linear `base_layer`, loads the official parameter names (`moe_A.default.<l>`,
 * `moe_gate.default.<l>.keys`, `moe_W_final.default`, …) and computes, in training mode,
 *
 *   out = base_layer(x) + Δ(x),   loss_main = Σ out ⊙ R,
 *   balance_loss = Σ_l γ s_l Σ_i f_i P_i   (switch gates only),
 *
 * with the gradients of `loss_main` (and of `balance_loss`) w.r.t. every parameter and the input x.
 */
import { buildNode, forwardContext, Linear, loadState, MoelabError, type Registry, Rng, type SafeTensor, tf } from '@moelab/core';
import type { AdapterFactory, SMoRELinearAdapter } from '@moelab/finetune';
import { configNumber, type Fixture, type FixtureOutputs, fixtureFloatTensor, fixtureInputVariable, fixtureParams, gradientsInto, values } from '../fixture.js';

const BASE = 'base_layer.';

function configList(fx: Fixture, key: string): number[] {
  const v = fx.doc.config[key];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'number'))
    throw new MoelabError(`fixture config needs a list of numbers "${key}"`, `${fx.doc.name}: $.config.${key}`);
  return v as number[];
}

function configString(fx: Fixture, key: string): string {
  const v = fx.doc.config[key];
  if (typeof v !== 'string') throw new MoelabError(`fixture config needs a string "${key}"`, `${fx.doc.name}: $.config.${key}`);
  return v;
}

export function smoreRunner(fx: Fixture, registry: Registry): FixtureOutputs {
  const dIn = configNumber(fx, 'in_features');
  const dOut = configNumber(fx, 'out_features');
  const ranks = configList(fx, 'r');
  const gate = configString(fx, 'gate_type');
  const factory = buildNode<AdapterFactory>(
    registry,
    'adapter',
    {
      type: 'smore-linear',
      ranks,
      experts: configList(fx, 's'),
      fanout: configList(fx, 'f'),
      gateDims: configList(fx, 'd_g'),
      dDown: configNumber(fx, 'dim_downproj_x'),
      // The official per-pool scale is lora_scaling = α_l / r_l.
      alpha: configList(fx, 'lora_scaling').map((c, l) => c * ranks[l]!),
      gate,
      activation: configString(fx, 'expert_act_fn'),
      activationPosition: configString(fx, 'activation_position'),
      balanceWeight: configNumber(fx, 'balance_loss_weight'),
    },
    `${fx.doc.name}: $.config`,
    0,
    {},
  );
  const base = new Linear(dIn, dOut, new Rng(0), { bias: true });
  const adapter = factory.build({ path: 'base_layer', module: base, dModel: dIn }, new Rng(0)) as SMoRELinearAdapter;
  const params = fixtureParams(fx);
  const adapterParams = new Map<string, SafeTensor>([...params].filter(([n]) => !n.startsWith(BASE)));
  loadState(base, params, { prefix: BASE, source: fx.doc.name });
  loadState(adapter.smore, adapterParams, { source: fx.doc.name });
  const x = fixtureInputVariable(fx, 'x');
  const R = fixtureFloatTensor(fx, 'input.R');
  const run = () => {
    const ctx = forwardContext(new Rng(0), true);
    const flat = tf.reshape(x, [-1, dIn]) as tf.Tensor2D;
    const delta = tf.reshape(adapter.delta(flat, ctx), [...x.shape.slice(0, -1), dOut]);
    const out = tf.add(base.forward(x), delta);
    const balance = ctx.aux.reduce<tf.Tensor>((s, a) => tf.add(s, tf.mul(a.value, a.coef)), tf.scalar(0)) as tf.Scalar;
    return { delta, out, balance };
  };
  const out: FixtureOutputs = new Map();
  tf.tidy(() => {
    const r = run();
    out.set('expected.delta', values(r.delta));
    out.set('expected.out', values(r.out));
    out.set('expected.loss_main', values(tf.sum(tf.mul(r.out, R))));
    if (gate === 'switch') out.set('expected.balance_loss', values(r.balance));
  });
  const vars: [string, tf.Variable][] = [
    ...base.namedParameters().map(([n, v]): [string, tf.Variable] => [`${BASE}${n}`, v]),
    ...adapter.smore.namedParameters(),
    ['x', x],
  ];
  gradientsInto(out, 'grad_main', () => tf.sum(tf.mul(run().out, R)) as tf.Scalar, vars);
  if (gate === 'switch') gradientsInto(out, 'grad_aux', () => run().balance, vars);
  base.dispose();
  adapter.dispose();
  tf.dispose([x, R]);
  return out;
}
