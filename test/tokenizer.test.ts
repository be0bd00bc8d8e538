import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { encode as r50kEncode } from 'gpt-tokenizer/cjs/encoding/r50k_base';
import { createRandomCheckpoint } from '../lib/checkpoint';
import { bytesToUnicode, Gpt2Tokenizer } from '../lib/tokenizer';
import { OptionError } from '../lib/errors';

// U+0085 and U+FEFF are left out on purpose: JS regex \s disagrees with the Rust/Python
// regex engines on them, so no JS tokenizer (this one or the peer) can be the judge there.
const CODE = [
  'function add(a: number, b: number): number {\n\treturn a + b; // sum\n}\n',
  'def main():\n    print(f"{x!r:>10}")\n    return [i**2 for i in range(10)]\n',
  '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); }\r\n',
  '  if (x !== undefined && y?.z) { arr[i++] = `t${s}`; }   \n',
];

const CORPUS: string[] = [
  'Hello, world!',
  'The quick brown fox jumps over the lazy dog.',
  "don't, I'll, we've, you're, she'd, it's, I'm — DON'T and I'LL",
  "'s 're 've 'm 'll 'd 't",
  '1234567 3.14 -0.5e10 2024-01-31 1,000,000 ½ ²',
  '你好，世界！我们今天去北京。',
  'こんにちは世界。カタカナとひらがな、漢字。',
  '한국어 텍스트도 있습니다.',
  'Emoji: 😀🤗🎉 family 👨‍👩‍👧‍👦 flag 🇯🇵🇺🇸 skin 👍🏽 heart ❤️',
  'combining: e\u0301 a\u0308 n\u0303 — precomposed: é ä ñ',
  'Tiếng Việt có dấu: Nguyễn, Hà Nội, phở.',
  'Ελληνικά, русский язык, עברית, العربية, हिन्दी',
  'tabs\tand\t\ttabs',
  'windows\r\nline\r\nendings\r\n',
  'multiple     spaces    here',
  'trailing spaces   ',
  '   leading spaces',
  '\n\n\nnewlines\n\n',
  'nbsp\u00a0here and ideographic\u3000space',
  '\u2028line sep\u2029para sep\u200bzwsp\u2009thin',
  ' ',
  '\t',
  'a',
  '<|endoftext',
  'math: ∑_{i=1}^{n} x_i ≤ ∞ ≠ π',
  ...CODE,
];

/** A few kB of everything above, interleaved. */
const MIXED = Array.from({ length: 120 }, (_, i) => CORPUS[(i * 7) % CORPUS.length] + (i % 3 === 0 ? ' ' : '\n')).join('');
const ALL = [...CORPUS, MIXED];

let root: string;
let fast: Gpt2Tokenizer;
let slow: Gpt2Tokenizer;

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmcore-tok-'));
  const { dir } = await createRandomCheckpoint({ out: path.join(root, 'tiny'), preset: 'tiny' });
  fast = await Gpt2Tokenizer.fromDirectory(dir);
  const slowDir = path.join(root, 'slow');
  fs.mkdirSync(slowDir);
  for (const name of ['vocab.json', 'merges.txt', 'tokenizer_config.json']) {
    fs.copyFileSync(path.join(dir, name), path.join(slowDir, name));
  }
  slow = await Gpt2Tokenizer.fromDirectory(slowDir);
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

test('the corpus is a few kB', () => {
  expect(Buffer.byteLength(MIXED)).toBeGreaterThan(2000);
});

describe('encode matches gpt-tokenizer r50k_base (GPT-2)', () => {
  test.each(ALL.map((s) => [JSON.stringify(s).slice(0, 60), s]))('%s', (_label, text) => {
    expect(fast.encode(text)).toEqual(r50kEncode(text));
  });

  test('empty string', () => {
    expect(fast.encode('')).toEqual([]);
    expect(fast.decode([])).toBe('');
  });
});

describe('decode', () => {
  test.each(ALL.map((s) => [JSON.stringify(s).slice(0, 60), s]))('round trip %s', (_label, text) => {
    expect(fast.decode(fast.encode(text))).toBe(text);
  });

  test('accepts typed arrays; ids past the vocabulary decode to nothing (as in HF); rejects non-ids', () => {
    expect(fast.decode(Int32Array.from([15496, 11, 995]))).toBe('Hello, world');
    expect(fast.decode([464, 50257, 3797])).toBe(fast.decode([464, 3797]));
    expect(() => fast.decode([-1])).toThrow(OptionError);
    expect(() => fast.decode([1.5])).toThrow(OptionError);
  });

  test('spaces before punctuation are kept (no clean-up)', () => {
    expect(fast.decode(fast.encode("a , b . c 's"))).toBe("a , b . c 's");
  });
});

describe('<|endoftext|>', () => {
  // Hugging Face's tokenizer.json marks it special, so literal text encodes to the token.
  test('literal text in the input encodes to 50256, like Hugging Face', () => {
    expect(fast.encode('<|endoftext|>')).toEqual([50256]);
    expect(r50kEncode('<|endoftext|>', { allowedSpecial: 'all' })).toEqual([50256]);
    // gpt-tokenizer 4.0.0 only finds special tokens at the start of its input, so compare piecewise.
    const text = 'Hello<|endoftext|> world<|endoftext|><|endoftext|>';
    expect(fast.encode(text)).toEqual([...r50kEncode('Hello'), 50256, ...r50kEncode(' world'), 50256, 50256]);
  });

  test('decode keeps it unless skipSpecialTokens', () => {
    const ids = fast.encode('a<|endoftext|>b');
    expect(fast.decode(ids)).toBe('a<|endoftext|>b');
    expect(fast.decode(ids, { skipSpecialTokens: true })).toBe('ab');
  });

  test('metadata', () => {
    for (const tok of [fast, slow]) {
      expect(tok.vocabSize).toBe(50257);
      expect(tok.eosTokenId).toBe(50256);
      expect(tok.bosTokenId).toBe(50256);
      expect(tok.tokenToId('<|endoftext|>')).toBe(50256);
      expect(tok.tokenToId('Ġthe')).toBe(262);
      expect(tok.idToToken(262)).toBe('Ġthe');
      expect(tok.idToToken(50256)).toBe('<|endoftext|>');
      expect(tok.idToToken(50257)).toBeUndefined();
      expect(tok.tokenToId('not a token')).toBeUndefined();
    }
  });
});

test('vocab.json + merges.txt gives the same tokenizer as tokenizer.json', () => {
  for (const text of [...ALL, 'x<|endoftext|>y']) {
    const ids = fast.encode(text);
    expect(slow.encode(text)).toEqual(ids);
    expect(slow.decode(ids)).toBe(fast.decode(ids));
  }
});

test('tokenizer.json in the older (no model.type) and newer (merges as pairs) spellings', async () => {
  const json = JSON.parse(fs.readFileSync(path.join(root, 'tiny', 'tokenizer.json'), 'utf8'));
  const variants = [
    { ...json, model: { ...json.model, type: undefined } },
    { ...json, model: { ...json.model, merges: json.model.merges.map((m: string) => m.split(' ')) } },
  ];
  for (const variant of variants) {
    const dir = fs.mkdtempSync(path.join(root, 'variant-'));
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(variant));
    const tok = await Gpt2Tokenizer.fromDirectory(dir);
    for (const text of [MIXED, 'x<|endoftext|>y']) expect(tok.encode(text)).toEqual(fast.encode(text));
    expect(tok.eosTokenId).toBe(50256); // no tokenizer_config.json: falls back to <|endoftext|>
  }
});

describe('stream decoder', () => {
  const streamAll = (ids: number[], skipSpecialTokens = false): string[] => {
    const stream = fast.createStreamDecoder({ skipSpecialTokens });
    return [...ids.map((id) => stream.push(id)), stream.flush()];
  };

  test.each(ALL.map((s) => [JSON.stringify(s).slice(0, 60), s]))('one token at a time: %s', (_label, text) => {
    const pieces = streamAll(fast.encode(text));
    expect(pieces.join('')).toBe(text);
    for (const piece of pieces) expect(piece).not.toContain('\uFFFD');
  });

  test('holds back a character split across tokens', () => {
    const ids = fast.encode('🤗'); // one emoji, three byte-level tokens
    expect(ids.length).toBeGreaterThan(1);
    const stream = fast.createStreamDecoder();
    ids.slice(0, -1).forEach((id) => expect(stream.push(id)).toBe(''));
    expect(stream.push(ids[ids.length - 1])).toBe('🤗');
    expect(stream.flush()).toBe('');
  });

  test('special tokens, with and without skipping, agree with decode()', () => {
    const ids = fast.encode('é<|endoftext|>日本');
    expect(streamAll(ids).join('')).toBe(fast.decode(ids));
    expect(streamAll(ids, true).join('')).toBe(fast.decode(ids, { skipSpecialTokens: true }));
  });

  test('invalid UTF-8 turns into U+FFFD exactly as decode() does', () => {
    const byteToken = (b: number): number => fast.tokenToId(bytesToUnicode()[b])!;
    const cases = [
      [byteToken(0xf0), byteToken(0x9f), fast.encode('a')[0]], // truncated 4-byte sequence, then ASCII
      [byteToken(0x80)], // lone continuation byte
      [byteToken(0xe6), 50256, byteToken(0x97), byteToken(0xa5)], // split by a special token
      [byteToken(0xe6), byteToken(0x97)], // cut off at the end: flush() reports it
    ];
    for (const ids of cases) {
      expect(streamAll(ids).join('')).toBe(fast.decode(ids));
      expect(streamAll(ids, true).join('')).toBe(fast.decode(ids, { skipSpecialTokens: true }));
    }
  });

  test('ids past the vocabulary stream as nothing; non-ids are rejected', () => {
    expect(fast.createStreamDecoder().push(60000)).toBe('');
    expect(() => fast.createStreamDecoder().push(-1)).toThrow(OptionError);
  });
});

describe('file errors name the file', () => {
  const dirWith = (files: Record<string, string>): string => {
    const dir = fs.mkdtempSync(path.join(root, 'bad-'));
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
    return dir;
  };
  const vocab = JSON.stringify({ a: 0, b: 1, ab: 2 });

  test.each([
    ['broken tokenizer.json', { 'tokenizer.json': '{"model": {' }, /tokenizer\.json: invalid JSON/],
    ['tokenizer.json without a model', { 'tokenizer.json': '{}' }, /tokenizer\.json: missing "model"/],
    ['broken vocab.json', { 'vocab.json': '{"a": 0,' }, /vocab\.json: invalid JSON/],
    ['vocab.json with a bad id', { 'vocab.json': '{"a": "zero"}', 'merges.txt': 'a b\n' }, /vocab\.json: token "a" has invalid id/],
    ['vocab.json without merges.txt', { 'vocab.json': vocab }, /merges\.txt: missing/],
    ['malformed merges.txt', { 'vocab.json': vocab, 'merges.txt': '#version: 0.2\na b\nabc\n' }, /merges\.txt: line 3/],
    ['broken tokenizer_config.json', { 'tokenizer_config.json': 'nope', 'tokenizer.json': '{}' }, /tokenizer_config\.json: invalid JSON/],
    ['no tokenizer files at all', {}, /found neither tokenizer\.json nor vocab\.json/],
  ])('%s', async (_label, files, message) => {
    const dir = dirWith(files as Record<string, string>);
    const error = await Gpt2Tokenizer.fromDirectory(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).toContain(dir);
    expect((error as { code?: string }).code).toBe('E_MODEL_FORMAT');
  });

  test('a missing directory', async () => {
    await expect(Gpt2Tokenizer.fromDirectory(path.join(root, 'nope'))).rejects.toThrow(/nope: found neither/);
  });
});
