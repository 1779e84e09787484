/**
 * Golden-fixture runners for kinds `switchhead` and `moeut_lm` (shared fixtures README, specs/moeut.md).
 *
 * - `switchhead`: builds `attention: switchhead` through the registry, loads `q.weight`, `k.weight`, `v`,
 *   `o`, `sel_v`, `sel_o` by name, runs it on the fixture's separate `q_src` / `k_src` / `v_src` inputs in
 *   training mode and computes `out`, `loss_main`, the selection logits, `reg_seq = reg_seq_o + reg_seq_v`
 *   (unscaled) and the gradients of `loss_main` and `reg_seq` w.r.t. every parameter and input.
 * - `moeut_lm`: builds a whole MoEUT language model from a model spec (`transformer-lm`, peri-LN blocks,
 *   `switchhead` attention, `ffn: sigma-moe`, layer grouping) and loads the fixture's parameters, which carry
 *   the official `MoEUTLM.state_dict()` names, with a strict `loadState`: that every name and shape matches
 *   is part of the test. Computes `logits`, `loss_main = sum(logits·R)`, `reg_loss` (the scaled total of the
 *   regularisers), `ce_loss`, and the gradients of `loss_main` and `reg_loss` w.r.t. every parameter.
 *   Needs the routers and experts plugins in the registry.
 */
import {
  type AttentionModule,
  buildModel,
  buildNode,
  crossEntropy,
  defineEntry,
  type FixtureRunner,
  fixtureEntryName,
  fixtureInputVariable,
  fixtureParams,
  fixtureTensor,
  forwardContext,
  gradientsInto,
  type LanguageModel,
  loadState,
  type Module,
  MoelabError,
  type NodeSpec,
  Rng,
  Type,
  tf,
} from '@moelab/core';
import type { SwitchHead } from './switchhead.js';

function num(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number') throw new MoelabError(`fixture config needs a number "${key}"`);
  return v;
}

function floatTensor(fx: Parameters<FixtureRunner>[0], name: string): tf.Tensor {
  const t = fixtureTensor(fx, name);
  return tf.tensor(Float32Array.from(t.data), t.shape);
}

const copy = (t: tf.Tensor) => (t.dataSync() as Float32Array).slice();

export const switchheadFixture = defineEntry({
  kind: 'fixture',
  name: fixtureEntryName('switchhead'),
  description: 'SwitchHead attention fixtures (specs/moeut.md §3), including the dense-gated experts = 1 case.',
  reference: 'shared fixtures README, moeut/',
  schema: Type.Record(Type.String(), Type.Unknown()),
  create:
    (config, ctx): FixtureRunner =>
    (fx) => {
      const cfg = config as Record<string, unknown>;
      const E = num(cfg, 'n_experts');
      const att = buildNode<AttentionModule & SwitchHead>(
        ctx.registry,
        'attention',
        {
          type: 'switchhead',
          heads: num(cfg, 'n_heads'),
          headDim: num(cfg, 'd_head'),
          experts: E,
          k: E > 1 ? num(cfg, 'moe_k') : 1,
          rotateFraction: num(cfg, 'rotate_fraction', 0.5),
          ropeBase: num(cfg, 'rope_base', 10000),
          expertDropout: num(cfg, 'expert_dropout', 0),
          dropout: num(cfg, 'dropout', 0),
          balanceCoef: 1,
        },
        '$',
        0,
        { dModel: num(cfg, 'd_model') },
      );
      att.assignPaths();
      loadState(att, fixtureParams(fx), { source: fx.doc.name });
      const q = fixtureInputVariable(fx, 'q_src');
      const k = fixtureInputVariable(fx, 'k_src');
      const v = fixtureInputVariable(fx, 'v_src');
      const R = floatTensor(fx, 'input.R');
      const run = () => {
        const fctx = forwardContext(new Rng(0), true);
        const y = att.forward(q, fctx, { q, k, v });
        att.finalizeForward(fctx);
        const o = fctx.aux.find((a) => a.name === 'att_entropy_o')?.value;
        const vr = fctx.aux.find((a) => a.name === 'att_entropy_v')?.value;
        return { y, o, v: vr };
      };
      const out = new Map<string, Float32Array | Int32Array>();
      tf.tidy(() => {
        const r = run();
        out.set('expected.out', copy(r.y));
        out.set('expected.loss_main', copy(tf.sum(tf.mul(r.y, R))));
        if (E > 1) {
          if (!r.o || !r.v) throw new MoelabError('SwitchHead produced no regulariser in training mode');
          out.set('expected.reg_seq_o', copy(r.o));
          out.set('expected.reg_seq_v', copy(r.v));
          out.set('expected.reg_seq', copy(tf.add(r.o, r.v)));
          out.set('expected.v_sel_logits', copy(att.selectionLogits(k, 'v')));
          out.set('expected.o_sel_logits', copy(att.selectionLogits(q, 'o')));
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
    },
});

/** The moelab model spec of an official `MoEUTLM` configuration (fixture config keys = the official argument names). */
export function moeutSpecFromOfficialConfig(cfg: Record<string, unknown>): NodeSpec {
  const d = num(cfg, 'd_model');
  const L = num(cfg, 'n_layers');
  const G = num(cfg, 'group_size', 2);
  if (L % G !== 0) throw new MoelabError(`n_layers ${L} is not divisible by group_size ${G}`);
  const attE = num(cfg, 'att_n_experts');
  return {
    type: 'transformer-lm',
    vocabSize: num(cfg, 'vocab_size'),
    dModel: d,
    contextLength: num(cfg, 'T', 1024),
    stack: { groupSize: G, repeats: L / G, order: 'abab' },
    headBias: true,
    tieEmbeddings: false,
    embeddingStd: 1 / Math.sqrt(d),
    outNorm: { type: 'layernorm', eps: num(cfg, 'layernorm_eps', 1e-5) },
    block: {
      type: 'transformer',
      norm: 'peri',
      normType: { type: 'layernorm', eps: num(cfg, 'layernorm_eps', 1e-5) },
      dropout: num(cfg, 'dropout', 0),
      attention: {
        type: 'switchhead',
        heads: num(cfg, 'n_heads'),
        headDim: num(cfg, 'd_head'),
        experts: attE,
        k: attE > 1 ? num(cfg, 'att_k', 2) : 1,
        rotateFraction: num(cfg, 'rotate_fraction', 0.5),
        ropeBase: num(cfg, 'rope_base', 10000),
        expertDropout: num(cfg, 'att_expert_dropout', 0),
        balanceCoef: num(cfg, 'att_entropy_reg', 0.001),
      },
      ffn: {
        type: 'sigma-moe',
        experts: num(cfg, 'ff_n_experts'),
        k: num(cfg, 'ff_k', 8),
        expertSize: num(cfg, 'ff_expert_size', 128),
        expertDropout: num(cfg, 'ff_expert_dropout', 0),
        balanceCoef: num(cfg, 'entropy_reg', 0.01),
      },
    },
  };
}

export const moeutLMFixture = defineEntry({
  kind: 'fixture',
  name: fixtureEntryName('moeut_lm'),
  description: 'Whole MoEUT language model fixtures, built from a model spec and loaded by the official state_dict names.',
  reference: 'shared fixtures README, moeut/; specs/moeut.md §4, §6.1',
  schema: Type.Record(Type.String(), Type.Unknown()),
  create:
    (config, ctx): FixtureRunner =>
    (fx) => {
      const model = buildModel<Module & LanguageModel>(moeutSpecFromOfficialConfig(config as Record<string, unknown>), ctx.registry);
      loadState(model, fixtureParams(fx), { source: fx.doc.name });
      const tok = fixtureTensor(fx, 'input.tokens');
      const tokens = tf.tensor(Int32Array.from(tok.data), tok.shape, 'int32');
      const R = floatTensor(fx, 'input.R');
      const run = () => {
        const fctx = forwardContext(new Rng(0), true);
        const logits = model.forward(tokens, fctx);
        let reg: tf.Scalar = tf.scalar(0);
        for (const a of fctx.aux) reg = tf.add(reg, tf.mul(a.value, a.coef)) as tf.Scalar;
        return { logits, reg };
      };
      const out = new Map<string, Float32Array | Int32Array>();
      tf.tidy(() => {
        const { logits, reg } = run();
        const [B, T, V] = logits.shape;
        out.set('expected.logits', copy(logits));
        out.set('expected.loss_main', copy(tf.sum(tf.mul(logits, R))));
        out.set('expected.reg_loss', copy(reg));
        const ce = crossEntropy(tf.slice(logits, [0, 0, 0], [B, T - 1, V]), tf.slice(tokens, [0, 1], [B, T - 1]));
        out.set('expected.ce_loss', copy(ce));
      });
      const vars = model.namedParameters();
      gradientsInto(out, 'grad_main', () => tf.sum(tf.mul(run().logits, R)) as tf.Scalar, vars);
      gradientsInto(out, 'grad_aux', () => run().reg, vars);
      model.dispose();
      tf.dispose([tokens, R]);
      return out;
    },
});
