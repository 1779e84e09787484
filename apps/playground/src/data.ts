/** Training text in the browser: the bundled Brown slice, or a text file the person drops in. */
import { ByteTokenizer, MoelabError, type Rng, type TokenSource } from '@moelab/core';

export interface TextData {
  name: string;
  train: string;
  val: string;
}

/** A dropped file: the last 10% is validation (the CLI's rule for own files). */
export function splitText(name: string, text: string): TextData {
  if (text.includes('\u0000')) throw new MoelabError('this does not look like a text file (it contains NUL bytes)', name);
  if (text.length < 2000) throw new MoelabError(`the text is too short to train on (${text.length} characters; give at least 2,000)`, name);
  const cut = Math.floor(text.length * 0.9);
  return { name, train: text.slice(0, cut), val: text.slice(cut) };
}

/** Uniform random windows from each split, like the CLI's CorpusTokens. */
export class TextTokens implements TokenSource {
  private readonly splits: Record<'train' | 'val', Int32Array>;
  constructor(readonly data: TextData) {
    const tok = new ByteTokenizer();
    this.splits = { train: tok.encode(data.train), val: tok.encode(data.val) };
  }
  tokens(split: 'train' | 'val'): Int32Array {
    return this.splits[split];
  }
  batch(rng: Rng, batchSize: number, seqLen: number, split: 'train' | 'val'): Int32Array {
    const src = this.splits[split];
    if (src.length < seqLen + 2) throw new MoelabError(`the ${split} split has ${src.length} tokens, fewer than one window of ${seqLen + 1}`, this.data.name);
    const out = new Int32Array(batchSize * (seqLen + 1));
    for (let b = 0; b < batchSize; b++) {
      const start = rng.int(src.length - seqLen - 1);
      out.set(src.subarray(start, start + seqLen + 1), b * (seqLen + 1));
    }
    return out;
  }
}
