/**
 * Domain corpora for multi-domain training (docs/recipes.md#domains-and-mixtures): every domain keeps
 * its own train and held-out token arrays, training windows come from a mixture of domains, and each
 * domain is evaluated on its own held-out text.
 *
 * Mixtures (a window is drawn by first picking a domain, then a uniform start in its train split):
 *   mix                p(d) = 1/n                      (the uniform domain mixture)
 *   domain:X           p(X) = 1
 *   domain:X+mix:α     p(X) = 1 − α + α/n,  p(d≠X) = α/n   (BAM/BTX: α = 0.1 general data in each expert's data)
 *
 * Held-out bits per byte of domain d, with a byte tokenizer (one token = one byte):
 *   bpb_d = (1 / (N ln 2)) Σ_{windows, positions} −ln p(x_{t+1} | x_≤t)
 * over `batches` fixed windows of the held-out split (the same windows for every model, so differences
 * between models are not sampling noise).
 */
import {
  ByteTokenizer,
  closeMatches,
  forwardContext,
  lmLoss,
  MoELayer,
  MoelabError,
  Rng,
  type TokenSource,
  type Tokenizer,
  type TrainableModel,
  tf,
} from '@moelab/core';
import type { Corpus } from './corpus.js';

/** How training windows are drawn from the domains. */
export type MixtureSpec = { kind: 'mix' } | { kind: 'domain'; domain: string; mix: number };

/**
 * Parse a mixture: `mix` (or `mix:uniform`), `domain:<name>`, `domain:<name>+mix:<α>`. `domain` in place
 * of the name means the domain given in `forDomain` (a `forEach: "domain"` phase).
 */
export function parseMixture(text: string, domains: readonly string[], where: string, forDomain?: string): MixtureSpec {
  if (text === 'mix' || text === 'mix:uniform') return { kind: 'mix' };
  const m = /^domain(?::([^+]+))?(?:\+mix:([0-9.]+))?$/.exec(text);
  if (!m)
    throw new MoelabError(
      `unknown data mixture "${text}"; use mix, domain:<name>, domain:<name>+mix:<fraction>, or in a forEach phase domain / domain+mix:<fraction>`,
      where,
    );
  const name = m[1] ?? forDomain;
  if (name === undefined) throw new MoelabError(`"${text}" names no domain; outside a forEach: "domain" phase write domain:<name>`, where);
  if (!domains.includes(name)) {
    const close = closeMatches(name, domains);
    throw new MoelabError(`unknown domain "${name}"${close.length ? `. Did you mean: ${close.join(', ')}?` : `; domains: ${domains.join(', ')}`}`, where);
  }
  const mix = m[2] === undefined ? 0 : Number(m[2]);
  if (!(mix >= 0 && mix <= 1)) throw new MoelabError(`the mixture fraction must be in [0, 1], got ${m[2]}`, where);
  return { kind: 'domain', domain: name, mix };
}

export function mixtureLabel(m: MixtureSpec): string {
  return m.kind === 'mix' ? 'mix' : m.mix > 0 ? `domain:${m.domain}+mix:${m.mix}` : `domain:${m.domain}`;
}

/** Each domain's train and held-out tokens. */
export class DomainTokens {
  readonly domains: string[];
  private readonly train = new Map<string, Int32Array>();
  private readonly heldOut = new Map<string, Int32Array>();

  constructor(
    readonly corpus: Corpus,
    readonly tokenizer: Tokenizer = new ByteTokenizer(),
  ) {
    this.domains = [...new Set(corpus.docs.map((d) => d.domain))];
    for (const domain of this.domains) {
      for (const split of ['train', 'val'] as const) {
        const parts = corpus.docs.filter((d) => d.domain === domain && d.split === split).map((d) => tokenizer.encode(d.text));
        const out = new Int32Array(parts.reduce((s, p) => s + p.length, 0));
        let at = 0;
        for (const p of parts) {
          out.set(p, at);
          at += p.length;
        }
        (split === 'train' ? this.train : this.heldOut).set(domain, out);
      }
    }
  }

  tokens(domain: string, split: 'train' | 'val'): Int32Array {
    const t = (split === 'train' ? this.train : this.heldOut).get(domain);
    if (!t) throw new MoelabError(`unknown domain "${domain}"; domains: ${this.domains.join(', ')}`);
    return t;
  }

  /** Throws when a domain's split is shorter than one window of `seqLen + 1` tokens. */
  checkWindows(seqLen: number, where?: string): void {
    for (const d of this.domains)
      for (const split of ['train', 'val'] as const) {
        const n = this.tokens(d, split).length;
        if (n < seqLen + 2)
          throw new MoelabError(
            `domain "${d}" has ${n} ${split === 'val' ? 'held-out' : 'training'} tokens, fewer than one window of ${seqLen + 1}; give more text or a larger heldOut fraction`,
            where,
          );
      }
  }

  /** A TokenSource drawing training windows from `mixture` (validation windows: uniform over domains). */
  source(mixture: MixtureSpec): TokenSource {
    const n = this.domains.length;
    const probs = this.domains.map((d) => (mixture.kind === 'mix' ? 1 / n : (d === mixture.domain ? 1 - mixture.mix : 0) + mixture.mix / n));
    const cdf: number[] = [];
    let acc = 0;
    for (const p of probs) {
      acc += p;
      cdf.push(acc);
    }
    return {
      batch: (rng: Rng, batchSize: number, seqLen: number, split: 'train' | 'val') => {
        const out = new Int32Array(batchSize * (seqLen + 1));
        for (let b = 0; b < batchSize; b++) {
          const u = rng.next() * cdf[n - 1]!;
          let i = 0;
          while (i < n - 1 && u >= cdf[i]!) i++;
          const src = this.tokens(this.domains[split === 'train' ? i : b % n]!, split);
          if (src.length < seqLen + 2)
            throw new MoelabError(`domain "${this.domains[i]}" has ${src.length} ${split} tokens, fewer than one window of ${seqLen + 1}`);
          const start = rng.int(src.length - seqLen - 1);
          out.set(src.subarray(start, start + seqLen + 1), b * (seqLen + 1));
        }
        return out;
      },
    };
  }
}

export interface HeldOutEvalOptions {
  /** Held-out windows per domain = batches × batchSize. */
  batches: number;
  batchSize: number;
  seqLen: number;
  /** Seeds the window positions; the same seed gives every model the same windows. */
  seed: number;
  /** Also count, per MoE layer, which expert is each token's first choice (routing shares). */
  routing?: boolean;
}

export interface HeldOutEval {
  /** Held-out bits per token (= bits per byte with the byte tokenizer) per domain. */
  bitsPerByte: Record<string, number>;
  mean: number;
  /**
   * Routing shares: shares[domain][e] = fraction of the domain's held-out tokens whose first-choice expert is
   * e, averaged over the MoE layers (each layer's counts over its tokens). Absent for a model without MoE layers.
   */
  routingShares?: Record<string, number[]>;
}

/**
 * Held-out bits per byte of every domain (fixed windows, eval mode) and, optionally, the routing shares.
 * The first choice of a token is its first entry in the layer's dispatch plan (plans are slot-major: every
 * token's first choice comes before any second choice).
 */
export function evaluateHeldOut(model: TrainableModel, data: DomainTokens, o: HeldOutEvalOptions): HeldOutEval {
  const bitsPerByte: Record<string, number> = {};
  const shares: Record<string, number[]> = {};
  const experts = new Map<string, number>();
  for (const m of model.modules()) if (m instanceof MoELayer) experts.set(m.path, m.experts.numExperts);
  data.domains.forEach((domain, di) => {
    const src = data.tokens(domain, 'val');
    if (src.length < o.seqLen + 2) throw new MoelabError(`domain "${domain}" has ${src.length} held-out tokens, fewer than one window of ${o.seqLen + 1}`);
    let nats = 0;
    const perLayer = new Map<string, number[]>();
    for (let i = 0; i < o.batches; i++) {
      const rng = Rng.derive(o.seed, 'heldout', di, i);
      const windows = new Int32Array(o.batchSize * (o.seqLen + 1));
      for (let b = 0; b < o.batchSize; b++) {
        const start = rng.int(src.length - o.seqLen - 1);
        windows.set(src.subarray(start, start + o.seqLen + 1), b * (o.seqLen + 1));
      }
      const ctx = forwardContext(Rng.derive(o.seed, 'heldout-fwd', di, i), false, { stats: false });
      if (o.routing) ctx.assignments = new Map();
      nats += tf.tidy(() => {
        const w = tf.tensor2d(windows, [o.batchSize, o.seqLen + 1], 'int32');
        return lmLoss(model, w, ctx).ce.dataSync()[0]!;
      });
      for (const [layer, calls] of ctx.assignments ?? []) {
        for (const call of calls) {
          const counts = perLayer.get(layer) ?? new Array<number>(experts.get(layer) ?? 0).fill(0);
          const seen = new Uint8Array(call.tokens);
          for (let n = 0; n < call.tokenIndex.length; n++) {
            const t = call.tokenIndex[n]!;
            if (seen[t]) continue;
            seen[t] = 1;
            const e = call.expertIndex[n]!;
            counts[e] = (counts[e] ?? 0) + 1;
          }
          perLayer.set(layer, counts);
        }
      }
    }
    bitsPerByte[domain] = nats / Math.max(1, o.batches) / Math.LN2;
    if (perLayer.size) {
      const E = Math.max(...[...perLayer.values()].map((c) => c.length));
      const mean = new Array<number>(E).fill(0);
      for (const counts of perLayer.values()) {
        const total = counts.reduce((a, b) => a + b, 0) || 1;
        counts.forEach((c, e) => {
          mean[e]! += c / total / perLayer.size;
        });
      }
      shares[domain] = mean;
    }
  });
  const values = Object.values(bitsPerByte);
  return {
    bitsPerByte,
    mean: values.reduce((a, b) => a + b, 0) / Math.max(1, values.length),
    ...(Object.keys(shares).length ? { routingShares: shares } : {}),
  };
}
