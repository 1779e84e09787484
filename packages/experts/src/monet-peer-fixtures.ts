/**
 * Golden-fixture runners for kinds `monet_hd`, `monet_vd` and `peer` (shared fixtures README, monet/ and
 * peer/; specs/monet.md §15, specs/peer-fff.md §1.7). Each builds the layer through the registry
 * (`ffn: monet-hd | monet-vd | peer`), loads the fixture's `param.*` and `buffer.*` tensors by their
 * official / paper names and computes, for both modes (`eval`: BatchNorm running statistics; `train`: batch
 * statistics, then the running-stat update), every expected value and gradient the fixture holds. Before
 * every train-mode forward the buffers are reset to the fixture's, so each one sees the same statistics.
 */
import {
  buildNode,
  defineEntry,
  type Fixture,
  type FixtureRunner,
  fixtureEntryName,
  fixtureInputVariable,
  fixtureTensor,
  forwardContext,
  gradientsInto,
  loadState,
  type Module,
  MoelabError,
  type Registry,
  Rng,
  type SafeTensor,
  Type,
  tf,
} from '@moelab/core';
import { type MonetLayer, monetAmbiguityLoss, monetExpertScores, monetUniformityLoss } from './monet.js';
import type { PEERLayer } from './peer.js';

type Out = Map<string, Float32Array | Int32Array>;
const MODES = ['eval', 'train'] as const;

function num(cfg: Record<string, unknown>, key: string): number {
  const v = cfg[key];
  if (typeof v !== 'number') throw new MoelabError(`fixture config needs a number "${key}"`);
  return v;
}

/** The fixture's parameters and buffers under their state_dict names. */
function fixtureState(fx: Fixture): Map<string, SafeTensor> {
  const out = new Map<string, SafeTensor>();
  for (const [name, t] of fx.tensors) {
    if (name.startsWith('param.')) out.set(name.slice(6), t);
    else if (name.startsWith('buffer.')) out.set(name.slice(7), t);
  }
  return out;
}

function build<M>(registry: Registry, spec: { type: string; [key: string]: unknown }, d: number, fx: Fixture): M & Module {
  const layer = buildNode<M & Module>(registry, 'ffn', spec, '$', 0, { dModel: d });
  layer.assignPaths('layer');
  loadState(layer, fixtureState(fx), { source: fx.doc.name });
  return layer;
}

const f32 = (t: tf.Tensor) => (t.dataSync() as Float32Array).slice();
const scalar = (t: tf.Tensor) => Float32Array.of(t.dataSync()[0]!);

function tensorOf(fx: Fixture, name: string): tf.Tensor {
  const t = fixtureTensor(fx, name);
  return tf.tensor(Float32Array.from(t.data), t.shape);
}

/** Reset buffers to the fixture's values (train-mode forwards update them). */
function resetBuffers(layer: Module, fx: Fixture): void {
  for (const [name, v] of layer.namedBuffers()) {
    const t = fixtureTensor(fx, `buffer.${name}`);
    tf.tidy(() => v.assign(tf.tensor(Float32Array.from(t.data), v.shape)));
  }
}

function monetRunner(decomposition: 'hd' | 'vd') {
  return (config: Record<string, unknown>, registry: Registry): FixtureRunner =>
    (fx) => {
      const d = num(config, 'hidden_size');
      const E = num(config, 'moe_experts');
      const H = num(config, 'moe_heads');
      const layer = build<MonetLayer>(
        registry,
        {
          type: `monet-${decomposition}`,
          experts: E,
          expertDim: num(config, 'moe_dim'),
          heads: H,
          k: num(config, 'moe_topk'),
          activation: config.hidden_act === 'relu2' || config.hidden_act === undefined ? 'relu2' : String(config.hidden_act),
          bnEps: typeof config.bn_eps === 'number' ? config.bn_eps : 1e-5,
          bnMomentum: typeof config.bn_momentum === 'number' ? config.bn_momentum : 0.1,
          unifCoef: 1,
          ambCoef: 1,
        },
        d,
        fx,
      );
      const router = layer.router;
      if (!router) throw new MoelabError('the fixture layer owns its router');
      const x = fixtureInputVariable(fx, 'x');
      const R = tensorOf(fx, 'input.R');
      const maskData = fixtureTensor(fx, 'input.expert_mask').data;
      const masked = new Set<number>();
      for (let id = 0; id < maskData.length; id++) if (maskData[id] === 0) masked.add(id);
      const out: Out = new Map();
      out.set('expected.sigma', Float32Array.of(router.sigma));
      const params = layer.namedParameters();
      const routerParams = params.filter(([n]) => n.startsWith('router.'));
      for (const mode of MODES) {
        const training = mode === 'train';
        const run = (expertMask?: Map<string, Set<number>>) => {
          resetBuffers(layer, fx);
          const ctx = forwardContext(new Rng(0), training, expertMask ? { expertMask } : {});
          const y = layer.forward(x, ctx);
          const aux = (name: string) => ctx.aux.find((a) => a.name === name)!.value;
          return { y, unif: aux('monet_unif'), amb: aux('monet_amb') };
        };
        tf.tidy(() => {
          const { y, unif, amb } = run();
          const r = layer.lastRouting!;
          if (!training) {
            out.set('expected.z1', f32(r.group1.z));
            out.set('expected.z2', f32(r.group2.z));
          }
          const groups = [r.group1, r.group2];
          groups.forEach((g, i) => {
            const K = i + 1;
            out.set(`expected.${mode}.zn${K}`, g.zn.slice());
            out.set(`expected.${mode}.sel${K}`, Int32Array.from(g.sel));
            out.set(`expected.${mode}.g${K}`, f32(g.g));
            out.set(`expected.${mode}.pbar${K}`, f32(tf.mean(g.g, 0)));
          });
          out.set(`expected.${mode}.expert_scores`, f32(monetExpertScores(r.group1.g, r.group2.g)));
          out.set(`expected.${mode}.out`, f32(y));
          out.set(`expected.${mode}.loss_main`, scalar(tf.sum(tf.mul(y, R))));
          out.set(`expected.${mode}.L_unif`, scalar(unif));
          out.set(`expected.${mode}.L_amb`, scalar(amb));
          // the layer's losses equal the standalone functions
          if (Math.abs(monetUniformityLoss(r.group1.g, r.group2.g).dataSync()[0]! - unif.dataSync()[0]!) > 0) throw new Error('L_unif mismatch');
          if (Math.abs(monetAmbiguityLoss(r.group1.g, r.group2.g).dataSync()[0]! - amb.dataSync()[0]!) > 0) throw new Error('L_amb mismatch');
          if (training) {
            groups.forEach((g, i) => {
              const K = i + 1;
              const norm = i === 0 ? router.norm1 : router.norm2;
              out.set(`expected.train.norm${K}.batch_mean`, Float32Array.from(g.mean));
              out.set(`expected.train.norm${K}.batch_var_biased`, Float32Array.from(g.varBiased));
              out.set(`expected.train.norm${K}.running_mean_after`, f32(norm.runningMean));
              out.set(`expected.train.norm${K}.running_var_after`, f32(norm.runningVar));
            });
          } else {
            const ym = run(new Map([[layer.path, masked]])).y;
            out.set('expected.eval.out_masked', f32(ym));
            out.set('expected.eval.loss_masked', scalar(tf.sum(tf.mul(ym, R))));
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

function peerRunner(config: Record<string, unknown>, registry: Registry): FixtureRunner {
  return (fx) => {
    const d = num(config, 'd_model');
    const N = num(config, 'n_experts');
    const h = num(config, 'heads');
    const k = num(config, 'topk');
    if (config.shared_sub_keys_across_heads === false) throw new MoelabError('the peer entry shares sub-keys across heads (the paper); this fixture does not');
    const layer = build<PEERLayer>(
      registry,
      {
        type: 'peer',
        experts: N,
        heads: h,
        k,
        keyDim: num(config, 'd_key'),
        activation: String(config.activation ?? 'relu').startsWith('gelu') ? 'gelu' : 'relu',
        bnEps: typeof config.bn_eps === 'number' ? config.bn_eps : 1e-5,
        bnMomentum: typeof config.bn_momentum === 'number' ? config.bn_momentum : 0.1,
      },
      d,
      fx,
    );
    const x = fixtureInputVariable(fx, 'x');
    const R = tensorOf(fx, 'input.R');
    const out: Out = new Map();
    const params = layer.namedParameters();
    for (const mode of MODES) {
      const training = mode === 'train';
      const run = () => {
        resetBuffers(layer, fx);
        return layer.forward(x, forwardContext(new Rng(0), training));
      };
      tf.tidy(() => {
        const y = run();
        const r = layer.lastRetrieval!;
        if (!training) out.set('expected.q_raw', f32(r.qRaw));
        out.set(`expected.${mode}.q_normalized`, f32(r.q));
        out.set(`expected.${mode}.indices`, Int32Array.from(r.indices));
        out.set(`expected.${mode}.scores`, f32(r.scores));
        out.set(`expected.${mode}.gates`, f32(r.gates));
        out.set(`expected.${mode}.out`, f32(y));
        out.set(`expected.${mode}.loss_main`, scalar(tf.sum(tf.mul(y, R))));
        const usage = layer.usage(r);
        out.set(`expected.${mode}.expert_usage`, Float32Array.of(usage.expertUsage));
        out.set(`expected.${mode}.unevenness`, Float32Array.of(usage.unevenness));
        if (training) {
          const bn = layer.queryBn!;
          out.set('expected.train.query_bn.batch_mean', Float32Array.from(r.batchMean!));
          out.set('expected.train.query_bn.batch_var_biased', Float32Array.from(r.batchVar!));
          out.set('expected.train.query_bn.running_mean_after', f32(bn.runningMean));
          out.set('expected.train.query_bn.running_var_after', f32(bn.runningVar));
        }
      });
      gradientsInto(out, `grad_main.${mode}`, () => tf.sum(tf.mul(run(), R)) as tf.Scalar, [...params, ['x', x]]);
    }
    layer.dispose();
    tf.dispose([x, R]);
    return out;
  };
}

function runnerEntry(kind: string, description: string, make: (config: Record<string, unknown>, registry: Registry) => FixtureRunner) {
  return defineEntry({
    kind: 'fixture',
    name: fixtureEntryName(kind),
    description,
    reference: 'shared fixtures README, monet/ and peer/',
    schema: Type.Record(Type.String(), Type.Unknown()),
    create: (config, ctx): FixtureRunner => make(config as Record<string, unknown>, ctx.registry),
  });
}

export const monetHDFixture = runnerEntry(
  'monet_hd',
  'MONET-HD layer + router fixtures (specs/monet.md §15): eval and train modes, masking, BN updates, all gradients.',
  monetRunner('hd'),
);
export const monetVDFixture = runnerEntry(
  'monet_vd',
  'MONET-VD layer + router fixtures (specs/monet.md §15): eval and train modes, masking, BN updates, all gradients.',
  monetRunner('vd'),
);
export const peerFixture = runnerEntry(
  'peer',
  'PEER layer fixtures (specs/peer-fff.md §1.7): retrieval, gates, outputs, BN updates, all gradients, both modes.',
  peerRunner,
);
