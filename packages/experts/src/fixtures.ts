/**
 * Golden-fixture runner for kind `sigma_moe` (shared fixtures README, specs/moeut.md §2): builds the
 * `ffn: sigma-moe` layer through the registry (so the `sigma-topk` router must be registered), loads the
 * fixture's parameters by their official names (`expert_sel`, `keys`, `values`) and computes `out`,
 * `sel_logits`, `loss_main = sum(out·R)`, `reg_seq` (MoEUT, per sequence), `reg_global` (all tokens) and the
 * gradients of `loss_main` and of `reg_seq` w.r.t. every parameter and both inputs.
 */
import {
  buildNode,
  defineEntry,
  type FixtureRunner,
  type FeedForward,
  fixtureEntryName,
  fixtureInputVariable,
  fixtureParams,
  fixtureTensor,
  forwardContext,
  gradientsInto,
  loadState,
  type Module,
  MoelabError,
  Rng,
  Type,
  tf,
} from '@moelab/core';

function num(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number') throw new MoelabError(`fixture config needs a number "${key}"`);
  return v;
}

export const sigmaMoEFixture = defineEntry({
  kind: 'fixture',
  name: fixtureEntryName('sigma_moe'),
  description: 'sigma-MoE layer fixtures (specs/moeut.md §2): the ffn sigma-moe entry with the official parameter names.',
  reference: 'shared fixtures README, moeut/',
  schema: Type.Record(Type.String(), Type.Unknown()),
  create:
    (config, ctx): FixtureRunner =>
    (fx) => {
      const cfg = config as Record<string, unknown>;
      const d = num(cfg, 'd_model');
      const build = (balance: 'sequence' | 'global') => {
        const layer = buildNode<FeedForward & Module>(
          ctx.registry,
          'ffn',
          {
            type: 'sigma-moe',
            experts: num(cfg, 'n_experts'),
            k: num(cfg, 'k'),
            expertSize: num(cfg, 'expert_size'),
            activation: (cfg.activation as string) ?? 'relu',
            expertDropout: num(cfg, 'expert_dropout', 0),
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
      const x = fixtureInputVariable(fx, 'x');
      const s = fixtureInputVariable(fx, 'sel_input');
      const R = tf.tensor(fixtureTensor(fx, 'input.R').data as Float32Array, fixtureTensor(fx, 'input.R').shape);
      const out = new Map<string, Float32Array | Int32Array>();
      const run = (m: FeedForward & Module) => {
        const fctx = forwardContext(new Rng(0), true);
        const y = m.forward(x, fctx, { routerInput: s });
        m.finalizeForward?.(fctx);
        const reg = fctx.aux.find((a) => a.name === 'entropy_balance');
        if (!reg) throw new MoelabError('the sigma-moe layer produced no entropy_balance regulariser in training mode');
        return { y, reg: reg.value };
      };
      tf.tidy(() => {
        const { y, reg } = run(layer);
        out.set('expected.out', (y.dataSync() as Float32Array).slice());
        out.set('expected.loss_main', Float32Array.of(tf.sum(tf.mul(y, R)).dataSync()[0]!));
        out.set('expected.reg_seq', Float32Array.of(reg.dataSync()[0]!));
        out.set('expected.reg_global', Float32Array.of(run(globalLayer).reg.dataSync()[0]!));
        const router = (layer as unknown as { router: { logits?: (x: tf.Tensor2D) => tf.Tensor2D } }).router;
        if (!router.logits) throw new MoelabError('the sigma-moe router does not expose logits()');
        out.set('expected.sel_logits', (router.logits(tf.reshape(s, [-1, d]) as tf.Tensor2D).dataSync() as Float32Array).slice());
      });
      const vars: [string, tf.Variable][] = [...layer.namedParameters(), ['x', x], ['sel_input', s]];
      gradientsInto(out, 'grad_main', () => tf.sum(tf.mul(run(layer).y, R)) as tf.Scalar, vars);
      gradientsInto(out, 'grad_aux', () => run(layer).reg, vars);
      layer.dispose();
      globalLayer.dispose();
      tf.dispose([x, s, R]);
      return out;
    },
});
