/**
 * Domain embeddings for Nexus's router (docs/upcycling.md#domain-embeddings): one vector per expert that
 * describes the data the expert was trained on. The paper embeds each expert's training set with an
 * external sentence-embedding model and averages; without an external service moelab offers
 *
 *   seed-mean:      d_i = normalise( mean over the tokens of domain i's samples of N_out(h_L) )
 *                   (the seed model's final normalised hidden state, m = dModel)
 *   hashed-ngrams:  d_i = normalise( mean over samples of normalise(c(s)) ),  c(s)[b] = #{n-grams g of s : hash(g) mod m = b}
 *                   (byte n-grams, n = 3..5, m buckets; model-free, close to BTM's tf-idf)
 *
 * or user-provided vectors. Every sample is a token sequence (bytes for the byte tokenizer).
 */
import { buildModel, forwardContext, hashString, type LanguageModel, loadState, type Module, MoelabError, type Registry, Rng, tf } from '@moelab/core';
import type { UpcycleSource } from './contract.js';

function normalise(v: Float64Array): Float32Array {
  let s = 0;
  for (const x of v) s += x * x;
  const n = Math.sqrt(s) || 1;
  return Float32Array.from(v, (x) => x / n);
}

/** The seed's final normalised hidden state, averaged over every token of each domain's samples. */
export function seedMeanEmbeddings(registry: Registry, seed: UpcycleSource, samples: Int32Array[][]): Float32Array[] {
  const model = buildModel<Module & LanguageModel & { outNorm: Module & { forward(x: tf.Tensor): tf.Tensor } }>(seed.spec, registry, 0);
  try {
    loadState(model, seed.weights, { source: seed.name });
    const norm = model.outNorm;
    if (!norm || typeof norm.forward !== 'function') throw new MoelabError('seed-mean domain embeddings need a transformer-lm seed (its out_norm)', seed.name);
    const d = (seed.spec as { dModel?: number }).dModel ?? 128;
    let sum: Float64Array | null = null;
    const original = norm.forward.bind(norm);
    // Capture what the final norm returns: the hidden state the head reads.
    norm.forward = (x: tf.Tensor) => {
      const y = original(x);
      const v = y.dataSync();
      const acc = sum!;
      for (let i = 0; i < v.length; i++) acc[i % d]! += v[i]!;
      return y;
    };
    try {
      return samples.map((domain, i) => {
        if (domain.length === 0) throw new MoelabError(`domain ${i} has no samples to embed`, `domainSamples[${i}]`);
        sum = new Float64Array(d);
        let tokens = 0;
        for (const seq of domain) {
          const T = Math.min(seq.length, model.contextLength);
          if (T === 0) continue;
          tf.tidy(() => {
            model.forward(tf.tensor2d(seq.subarray(0, T), [1, T], 'int32'), forwardContext(new Rng(0), false));
          });
          tokens += T;
        }
        if (tokens === 0) throw new MoelabError(`domain ${i}'s samples are all empty`, `domainSamples[${i}]`);
        return normalise(sum.map((x) => x / tokens));
      });
    } finally {
      norm.forward = original;
    }
  } finally {
    model.dispose();
  }
}

/** Mean of the L2-normalised hashed byte n-gram counts (n = 3..5) of each domain's samples, in `buckets` dimensions. */
export function hashedNgramEmbeddings(samples: Int32Array[][], buckets = 1024): Float32Array[] {
  return samples.map((domain, i) => {
    if (domain.length === 0) throw new MoelabError(`domain ${i} has no samples to embed`, `domainSamples[${i}]`);
    const mean = new Float64Array(buckets);
    for (const seq of domain) {
      const c = new Float64Array(buckets);
      for (let n = 3; n <= 5; n++)
        for (let t = 0; t + n <= seq.length; t++) c[hashString(`${n}:${Array.prototype.join.call(seq.subarray(t, t + n), ',')}`) % buckets]! += 1;
      const unit = normalise(c);
      for (let b = 0; b < buckets; b++) mean[b]! += unit[b]! / domain.length;
    }
    return normalise(mean);
  });
}
