/**
 * HF tokenizers through @huggingface/tokenizers: the byte-level tokenizer.json moelab writes encodes
 * and decodes exactly like the byte tokenizer; a small BPE tokenizer.json encodes with its merges; bad
 * tokenizer.json files are one-line errors naming the file.
 */
import { ByteTokenizer } from '@moelab/core';
import { describe, expect, it } from 'vitest';
import { byteTokenizerJson, isByteTokenizerJson, parseHfTokenizer } from './tokenizer.js';

describe('HF tokenizers', () => {
  it("byteTokenizerJson() is moelab's byte tokenizer: id = UTF-8 byte, lossless both ways", () => {
    const tok = parseHfTokenizer(byteTokenizerJson());
    const bytes = new ByteTokenizer();
    const text = 'The jury said: "naïve café" — 42 ∑ 日本 🙂\n\ttabs  and  spaces';
    expect(Array.from(tok.encode(text))).toEqual(Array.from(bytes.encode(text)));
    expect(tok.decode(bytes.encode(text))).toBe(text);
    expect(tok.vocabSize).toBe(256);
    // Recognised whatever the formatting (transformers re-saves it compactly), and only when it is bytes.
    expect(isByteTokenizerJson(JSON.stringify(JSON.parse(byteTokenizerJson())))).toBe(true);
    const other = JSON.parse(byteTokenizerJson());
    other.model.merges = ['Ġ t'];
    expect(isByteTokenizerJson(JSON.stringify(other))).toBe(false);
    expect(isByteTokenizerJson('{')).toBe(false);
  });

  it('a BPE tokenizer.json applies its merges and reports its vocabulary size with added tokens', () => {
    const json = JSON.stringify({
      version: '1.0',
      added_tokens: [{ id: 6, content: '<eos>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
      normalizer: null,
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: null,
      decoder: null,
      model: { type: 'BPE', vocab: { a: 0, b: 1, c: 2, ab: 3, abc: 4, '[UNK]': 5 }, merges: ['a b', 'ab c'], unk_token: '[UNK]' },
    });
    const tok = parseHfTokenizer(json);
    expect(Array.from(tok.encode('abc ab c'))).toEqual([4, 3, 2]);
    expect(tok.vocabSize).toBe(7);
  });

  it('bad tokenizer.json: one line naming the file', () => {
    expect(() => parseHfTokenizer('{"model": ', 'm/tokenizer.json')).toThrow(/^m\/tokenizer.json: not valid JSON \(/);
    expect(() => parseHfTokenizer('{"vocab": {}}', 'm/tokenizer.json')).toThrow(
      /^m\/tokenizer.json: not a Hugging Face tokenizer: a tokenizer.json object has a "model" field$/,
    );
    expect(() => parseHfTokenizer('{"model": {"type": "Nonsense"}}', 'm/tokenizer.json')).toThrow(/^m\/tokenizer.json: the tokenizer does not load: [^\n]+$/);
  });
});
