#!/usr/bin/env python3
"""Extra tokenizer cases for tests/test_tokenizer.c, encoded with Hugging Face `tokenizers`
(pip) from the fixtures' nvlm-d-72b/tokenizer.json. Writes tests/data/tokenizer/extra_cases.json.

Covers what the 161 goldens do not stress: White_Space edge code points (U+0085, U+180E,
U+2028, NBSP), case-folded contractions (Kelvin sign, long s), whitespace runs around CR/LF,
NUL bytes, long single-class runs (the heap BPE path), added tokens glued to text, split_special,
and seeded random strings mixing all of that.

    python3 tests/oracle/gen_tokenizer_cases.py
"""
import json
import os
import random

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = os.path.join(ROOT, "tests/data/nvlm-d-72b/tokenizer.json")
OUT = os.path.join(ROOT, "tests/data/tokenizer/extra_cases.json")

FIXED = [
    "a\u0085\u0085b", "a\u180e\u180eb", "x\u2028y\u2029z", "a\u00a0\u00a0b c",
    "IT'S \u212a'S THE ca\u017f'\u017f", "'S'T'RE'VE'M'LL'D 's 't", "don\u2019t 'Ll",
    "   \r\n\r\n   x", "\t\t\n \n\t y  ", " \r \n \u3000\u3000z", "a\x00b\x00\x00 c",
    "a" * 300, "\u4f60" * 200, "!" * 257, " " * 500 + "end", "9" * 40,
    "<|im_start|><|im_end|>", "x<|im_end|>y", " <|endoftext|> ", "<|im_start|", "<<|im_end|>>",
    "<tool_call>{\"a\": 1}</tool_call>", "<|fim_prefix|>def<|fim_suffix|>", "e\u0301\u0301 \u1100\u1161\u11a8",
    "\ud55c\uad6d\uc5b4 \u304b\u3099 \u30cf\u309a", "\u0915\u094d\u0937 \u0627\u0644\u0639\u0631\u0628\u064a\u0629\u0654",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F3FB\U0001F44D\U0001F3FD", "\ufb01\u2126\u212b\u00c5",
    "Image-1: <Image><tile_1><|vision_pad|></Image>\n", "", "\n", " ", "a\r", "\r\r\n\n\r",
]

ALPHABET = (list("abcXYZ019 '\t\r\n.,;!?_-<>|/") + ["\u00e9", "e\u0301", "\u4f60", "\u597d", "\u3042",
            "\u0645", "\U0001F600", "\u200d", "\u0085", "\u00a0", "\u3000", "\u212a", "\u017f",
            "<|im_end|>", "<|vision_pad|>", "<tool_call>", "<think>", "  ", "\r\n"])


def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main():
    tok = Tokenizer.from_file(TOK)
    rng = random.Random(1234)
    texts = list(FIXED)
    for _ in range(120):
        n = rng.randint(1, 40)
        texts.append("".join(rng.choice(ALPHABET) for _ in range(n)))
    cases = []
    for t in texts:
        enc = tok.encode(t, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        split = tok.encode(t, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({
            "text_utf8_hex": t.encode("utf-8").hex(),
            "ids": enc,
            "split_special_ids": split,
            "decoded_utf8_hex": tok.decode(enc, skip_special_tokens=False).encode("utf-8").hex(),
            "decoded_skip_special_utf8_hex": tok.decode(enc, skip_special_tokens=True)
            .encode("utf-8").hex(),
        })
    # random id sequences (byte tokens that split UTF-8 characters included) and their decodings
    bl = bytes_to_unicode()
    byte_ids = [tok.token_to_id(bl[b]) for b in (0x00, 0xc3, 0xa4, 0xe4, 0xbd, 0xa0, 0xf0, 0x9f,
                                                  0x98, 0x80, 0xe2, 0xff, 0xc0, 0xed)]
    seqs = []
    for _ in range(60):
        n = rng.randint(1, 30)
        ids = [rng.choice(byte_ids) if rng.random() < 0.5 else rng.randrange(0, 151665)
               for _ in range(n)]
        seqs.append({"ids": ids,
                     "decoded_utf8_hex": tok.decode(ids, skip_special_tokens=False)
                     .encode("utf-8").hex(),
                     "decoded_skip_special_utf8_hex": tok.decode(ids, skip_special_tokens=True)
                     .encode("utf-8").hex()})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "tests/oracle/gen_tokenizer_cases.py",
                   "tokenizers_version": __import__("tokenizers").__version__,
                   "tokenizer": "tests/data/nvlm-d-72b/tokenizer.json",
                   "cases": cases, "decode_sequences": seqs}, f, ensure_ascii=True, indent=0)
    print(f"{len(cases)} cases, {len(seqs)} id sequences -> {OUT}")


if __name__ == "__main__":
    main()
