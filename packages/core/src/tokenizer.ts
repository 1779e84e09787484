/** Byte-level tokenizer: UTF-8 bytes are the tokens (vocabulary 256). Lossless for any text. */
export interface Tokenizer {
  readonly name: string;
  readonly vocabSize: number;
  encode(text: string): Int32Array;
  decode(ids: ArrayLike<number>): string;
}

export class ByteTokenizer implements Tokenizer {
  readonly name = 'byte';
  readonly vocabSize = 256;
  private enc = new TextEncoder();
  private dec = new TextDecoder('utf-8', { fatal: false });

  encode(text: string): Int32Array {
    return Int32Array.from(this.enc.encode(text));
  }

  decode(ids: ArrayLike<number>): string {
    return this.dec.decode(Uint8Array.from(ids as ArrayLike<number>, (x) => x & 0xff));
  }
}
