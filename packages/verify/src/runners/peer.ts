/**
 * Runner for kind `peer` (PEER, parameter-efficient expert retrieval, arXiv:2407.04353). Builds
 * `ffn: peer` through the registry, loads the fixture's `param.*` / `buffer.*` tensors by the paper's
 * names and computes, in both modes (`eval`: BatchNorm running statistics; `train`: batch statistics,
 * then the running-statistics update):
 *
 *   q = BN(W_q x),  per head: top-k over s1[i] + s2[j] (product keys),  gates = softmax(scores),
 *   out = Σ_heads Σ_r gate_r · act(u_{e_r} · x) v_{e_r},   loss_main = Σ out ⊙ R,
 *
 * the expert usage / unevenness metrics, the running statistics after the update and the gradients of
 * `loss_main`. The retrieval is read from the layer's own `retrieve` on the same input and buffers as the
 * forward pass.
 */
import { forwardContext, MoelabError, type Registry, Rng, tf } from '@moelab/core';
import type { PEERLayer } from '@moelab/experts';
import {
  buildFixtureLayer,
  configNumber,
  type Fixture,
  type FixtureOutputs,
  fixtureFloatTensor,
  fixtureInputVariable,
  gradientsInto,
  MODES,
  resetBuffers,
  scalarValue,
  values,
} from '../fixture.js';

export function peerRunner(fx: Fixture, registry: Registry): FixtureOutputs {
  const d = configNumber(fx, 'd_model');
  if (fx.doc.config.shared_sub_keys_across_heads === false)
    throw new MoelabError(
      'the peer entry shares sub-keys across heads (as the paper does); this fixture does not',
      `${fx.doc.name}: $.config.shared_sub_keys_across_heads`,
    );
  const layer = buildFixtureLayer<PEERLayer>(
    registry,
    {
      type: 'peer',
      experts: configNumber(fx, 'n_experts'),
      heads: configNumber(fx, 'heads'),
      k: configNumber(fx, 'topk'),
      keyDim: configNumber(fx, 'd_key'),
      activation: String(fx.doc.config.activation ?? 'relu').startsWith('gelu') ? 'gelu' : 'relu',
      bnEps: configNumber(fx, 'bn_eps', 1e-5),
      bnMomentum: configNumber(fx, 'bn_momentum', 0.1),
    },
    d,
    fx,
  );
  const x = fixtureInputVariable(fx, 'x');
  const R = fixtureFloatTensor(fx, 'input.R');
  const out: FixtureOutputs = new Map();
  const params = layer.namedParameters();
  for (const mode of MODES) {
    const training = mode === 'train';
    const run = () => {
      resetBuffers(layer, fx);
      return layer.forward(x, forwardContext(new Rng(0), training));
    };
    tf.tidy(() => {
      resetBuffers(layer, fx);
      const r = layer.retrieve(tf.reshape(x, [-1, d]) as tf.Tensor2D, training);
      if (training) {
        const bn = layer.queryBn;
        if (!bn || !r.batchMean || !r.batchVar) throw new MoelabError('the peer layer is expected to normalise its queries (queryBatchNorm)', fx.doc.name);
        out.set('expected.train.query_bn.batch_mean', Float32Array.from(r.batchMean));
        out.set('expected.train.query_bn.batch_var_biased', Float32Array.from(r.batchVar));
        out.set('expected.train.query_bn.running_mean_after', values(bn.runningMean));
        out.set('expected.train.query_bn.running_var_after', values(bn.runningVar));
      } else out.set('expected.q_raw', values(r.qRaw));
      out.set(`expected.${mode}.q_normalized`, values(r.q));
      out.set(`expected.${mode}.indices`, Int32Array.from(r.indices));
      out.set(`expected.${mode}.scores`, values(r.scores));
      out.set(`expected.${mode}.gates`, values(r.gates));
      const usage = layer.usage(r);
      out.set(`expected.${mode}.expert_usage`, Float32Array.of(usage.expertUsage));
      out.set(`expected.${mode}.unevenness`, Float32Array.of(usage.unevenness));
      const y = run();
      out.set(`expected.${mode}.out`, values(y));
      out.set(`expected.${mode}.loss_main`, scalarValue(tf.sum(tf.mul(y, R))));
    });
    gradientsInto(out, `grad_main.${mode}`, () => tf.sum(tf.mul(run(), R)) as tf.Scalar, [...params, ['x', x]]);
  }
  layer.dispose();
  tf.dispose([x, R]);
  return out;
}
