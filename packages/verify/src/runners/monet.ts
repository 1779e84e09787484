/**
 * Runners for kinds `monet_hd` and `monet_vd` (MONET, arXiv:2412.04139; official code
 * github.com/dmis-lab/Monet). Build `ffn: monet-hd | monet-vd` through the registry, load the fixture's
 * `param.*` and `buffer.*` tensors by their official names and compute, in both modes (`eval`: BatchNorm
 * running statistics; `train`: batch statistics, then the running-statistics update):
 *
 *   z_K = x W_Kᵀ (group K = 1, 2),  zn_K = BN(z_K),  sel_K = zn_K > σ,  g_K = softmax over selected,
 *   G[t,i,j] = Σ_h g1[t,h,i] g2[t,h,j],  out = Σ_ij G_ij E_ij(x),  loss_main = Σ out ⊙ R,
 *
 * the uniformity and ambiguity losses, the masked output (eval), the running statistics after the
 * update (train) and every gradient the fixture holds. The routing is read from the layer's own router
 * (`MonetRouter.route`) on the same input and buffers as the forward pass; before every forward the
 * buffers are reset to the fixture's, so each one sees the same statistics.
 */
import { forwardContext, MoelabError, type Registry, Rng, tf } from '@moelab/core';
import { type MonetLayer, monetAmbiguityLoss, monetExpertScores, monetUniformityLoss } from '@moelab/experts';
import {
  buildFixtureLayer,
  configNumber,
  type Fixture,
  type FixtureOutputs,
  fixtureFloatTensor,
  fixtureInputVariable,
  fixtureTensor,
  gradientsInto,
  MODES,
  resetBuffers,
  scalarValue,
  values,
} from '../fixture.js';

function sameLoss(name: string, standalone: tf.Tensor, fromLayer: tf.Tensor, fx: Fixture): void {
  if (standalone.dataSync()[0] !== fromLayer.dataSync()[0])
    throw new MoelabError(`the layer's ${name} differs from the standalone loss function on the same routing`, fx.doc.name);
}

function monetRunner(decomposition: 'hd' | 'vd') {
  return (fx: Fixture, registry: Registry): FixtureOutputs => {
    const d = configNumber(fx, 'hidden_size');
    const act = fx.doc.config.hidden_act;
    const layer = buildFixtureLayer<MonetLayer>(
      registry,
      {
        type: `monet-${decomposition}`,
        experts: configNumber(fx, 'moe_experts'),
        expertDim: configNumber(fx, 'moe_dim'),
        heads: configNumber(fx, 'moe_heads'),
        k: configNumber(fx, 'moe_topk'),
        activation: act === 'relu2' || act === undefined ? 'relu2' : String(act),
        bnEps: configNumber(fx, 'bn_eps', 1e-5),
        bnMomentum: configNumber(fx, 'bn_momentum', 0.1),
        unifCoef: 1,
        ambCoef: 1,
      },
      d,
      fx,
    );
    const router = layer.router;
    if (!router) throw new MoelabError('the fixture layer is expected to own its router', fx.doc.name);
    const x = fixtureInputVariable(fx, 'x');
    const R = fixtureFloatTensor(fx, 'input.R');
    const maskData = fixtureTensor(fx, 'input.expert_mask').data;
    const masked = new Set<number>();
    for (let id = 0; id < maskData.length; id++) if (maskData[id] === 0) masked.add(id);
    const out: FixtureOutputs = new Map();
    out.set('expected.sigma', Float32Array.of(router.sigma));
    const params = layer.namedParameters();
    const routerParams = params.filter(([n]) => n.startsWith('router.'));
    for (const mode of MODES) {
      const training = mode === 'train';
      const run = (expertMask?: Map<string, Set<number>>) => {
        resetBuffers(layer, fx);
        const ctx = forwardContext(new Rng(0), training, expertMask ? { expertMask } : {});
        const y = layer.forward(x, ctx);
        const aux = (name: string) => {
          const a = ctx.aux.find((e) => e.name === name);
          if (!a) throw new MoelabError(`the monet layer pushed no ${name} loss`, fx.doc.name);
          return a.value;
        };
        return { y, unif: aux('monet_unif'), amb: aux('monet_amb') };
      };
      tf.tidy(() => {
        resetBuffers(layer, fx);
        const r = router.route(tf.reshape(x, [-1, d]) as tf.Tensor2D, training);
        const groups = [r.group1, r.group2];
        if (training) {
          // the statistics route() normalised with, and the buffers after its running-statistics update
          groups.forEach((g, i) => {
            const K = i + 1;
            const norm = i === 0 ? router.norm1 : router.norm2;
            out.set(`expected.train.norm${K}.batch_mean`, Float32Array.from(g.mean));
            out.set(`expected.train.norm${K}.batch_var_biased`, Float32Array.from(g.varBiased));
            out.set(`expected.train.norm${K}.running_mean_after`, values(norm.runningMean));
            out.set(`expected.train.norm${K}.running_var_after`, values(norm.runningVar));
          });
        } else {
          out.set('expected.z1', values(r.group1.z));
          out.set('expected.z2', values(r.group2.z));
        }
        groups.forEach((g, i) => {
          const K = i + 1;
          out.set(`expected.${mode}.zn${K}`, g.zn.slice());
          out.set(`expected.${mode}.sel${K}`, Int32Array.from(g.sel));
          out.set(`expected.${mode}.g${K}`, values(g.g));
          out.set(`expected.${mode}.pbar${K}`, values(tf.mean(g.g, 0)));
        });
        out.set(`expected.${mode}.expert_scores`, values(monetExpertScores(r.group1.g, r.group2.g)));
        const { y, unif, amb } = run();
        out.set(`expected.${mode}.out`, values(y));
        out.set(`expected.${mode}.loss_main`, scalarValue(tf.sum(tf.mul(y, R))));
        out.set(`expected.${mode}.L_unif`, scalarValue(unif));
        out.set(`expected.${mode}.L_amb`, scalarValue(amb));
        sameLoss('uniformity loss', monetUniformityLoss(r.group1.g, r.group2.g), unif, fx);
        sameLoss('ambiguity loss', monetAmbiguityLoss(r.group1.g, r.group2.g), amb, fx);
        if (!training) {
          const ym = run(new Map([[layer.path, masked]])).y;
          out.set('expected.eval.out_masked', values(ym));
          out.set('expected.eval.loss_masked', scalarValue(tf.sum(tf.mul(ym, R))));
        }
      });
      gradientsInto(out, `grad_main.${mode}`, () => tf.sum(tf.mul(run().y, R)) as tf.Scalar, [...params, ['x', x]]);
      gradientsInto(out, `grad_aux_unif.${mode}`, () => run().unif, [...routerParams, ['x', x]]);
      gradientsInto(out, `grad_aux_amb.${mode}`, () => run().amb, [...routerParams, ['x', x]]);
    }
    layer.dispose();
    tf.dispose([x, R]);
    return out;
  };
}

export const monetHDRunner = monetRunner('hd');
export const monetVDRunner = monetRunner('vd');
