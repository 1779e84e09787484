/**
 * Hugging Face tokenizers (`tokenizer.json`) as moelab {@link Tokenizer}s, through
 * `@huggingface/tokenizers` (the maintained pure-JS implementation of the HF tokenizers pipeline:
 * normalizer, pre-tokenizer, BPE / WordPiece / Unigram model, decoder), so an imported model keeps the
 * tokenizer it was trained with. And the other way: a tokenizer.json that reproduces moelab's byte
 * tokenizer (token id = UTF-8 byte), written beside exported byte-level models.
 */
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { MoelabError, type Tokenizer } from '@moelab/core';

export class HfTokenizer implements Tokenizer {
  readonly name = 'tokenizer.json';
  /** One past the largest token id (added tokens included). */
  readonly vocabSize: number;

  constructor(
    private readonly impl: HfTokenizerImpl,
    /** The tokenizer.json text, kept so the tokenizer can travel with a checkpoint. */
    readonly json: string,
  ) {
    let max = -1;
    for (const id of impl.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
  }

  /** Token ids of `text`, without special tokens (a corpus is one stream; a prompt is continued as is). */
  encode(text: string): Int32Array {
    return Int32Array.from(this.impl.encode(text, { add_special_tokens: false }).ids);
  }

  decode(ids: ArrayLike<number>): string {
    return this.impl.decode(Array.from(ids));
  }
}

/**
 * Parse a tokenizer.json (and optionally its tokenizer_config.json). Bad input — not JSON, not a
 * tokenizer, a model type the library does not know — is one MoelabError naming `where`.
 */
export function parseHfTokenizer(json: string, where = 'tokenizer.json', configJson?: string): HfTokenizer {
  let tok: unknown;
  let cfg: unknown = {};
  try {
    tok = JSON.parse(json);
    if (configJson !== undefined) cfg = JSON.parse(configJson);
  } catch (e) {
    throw new MoelabError(`not valid JSON (${(e as Error).message})`, where);
  }
  if (!tok || typeof tok !== 'object' || Array.isArray(tok) || !('model' in tok))
    throw new MoelabError('not a Hugging Face tokenizer: a tokenizer.json object has a "model" field', where);
  try {
    const impl = new HfTokenizerImpl(tok, cfg as object);
    impl.encode('a'); // fail here, not at the first real use
    return new HfTokenizer(impl, json);
  } catch (e) {
    throw new MoelabError(`the tokenizer does not load: ${(e as Error).message.split('\n')[0]}`, where);
  }
}

/** GPT-2's byte -> printable character map (the ByteLevel pre-tokenizer's alphabet). */
function byteAlphabet(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const chars: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) chars[b] = String.fromCodePoint(printable.includes(b) ? b : next++);
  return chars;
}

/**
 * A tokenizer.json equal to moelab's byte tokenizer: the ByteLevel pre-tokenizer (no regex split) maps
 * each UTF-8 byte to one character, and a BPE model without merges gives character c of byte b the id b.
 */
export function byteTokenizerJson(): string {
  const vocab: Record<string, number> = {};
  byteAlphabet().forEach((c, b) => {
    vocab[c] = b;
  });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  return `${JSON.stringify(
    {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: byteLevel,
      post_processor: null,
      decoder: byteLevel,
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: false,
        vocab,
        merges: [],
      },
    },
    null,
    2,
  )}\n`;
}

/**
 * Whether a tokenizer.json is moelab's byte tokenizer (as {@link byteTokenizerJson} writes it, or as
 * transformers saves it back, whatever the formatting): a BPE model without merges whose vocabulary maps
 * the ByteLevel character of byte b to b, a ByteLevel pre-tokenizer without the regex split, no
 * normalizer and no added tokens.
 */
export function isByteTokenizerJson(json: string): boolean {
  let t: Record<string, unknown>;
  try {
    t = JSON.parse(json);
  } catch {
    return false;
  }
  const model = t?.model as { type?: string; vocab?: Record<string, number>; merges?: unknown[] } | undefined;
  const pre = t?.pre_tokenizer as { type?: string; use_regex?: boolean } | null | undefined;
  if (model?.type !== 'BPE' || (model.merges?.length ?? 0) !== 0 || !model.vocab) return false;
  if (pre?.type !== 'ByteLevel' || pre.use_regex !== false || t.normalizer) return false;
  if (Array.isArray(t.added_tokens) && t.added_tokens.length > 0) return false;
  const chars = byteAlphabet();
  return Object.keys(model.vocab).length === 256 && chars.every((c, b) => model.vocab![c] === b);
}
