#!/usr/bin/env python3
"""Hugging Face `tokenizers` on the corpus bench_tokenizer wrote (documents separated by 0x1e),
single-threaded (TOKENIZERS_PARALLELISM=false, one encode per document), best of 3; prints the
speed next to nvlm's (OUT_DIR/nvlm_result.txt) and checks both produced the same token count.

    python3 bench/bench_tokenizer_hf.py OUT_DIR [tokenizer.json]
"""
import os
import resource
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"


def main():
    out_dir = sys.argv[1]
    path = sys.argv[2] if len(sys.argv) > 2 else "tests/data/nvlm-d-72b/tokenizer.json"
    from tokenizers import Tokenizer

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(path)
    load_ms = (time.perf_counter() - t0) * 1e3
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.path.join(out_dir, "corpus.txt"), "rb") as f:
        data = f.read()
    docs = [d.decode("utf-8") for d in data.split(b"\x1e") if d]
    best = 1e30
    total = 0
    for _ in range(3):
        total = 0
        t0 = time.perf_counter()
        for d in docs:
            total += len(tok.encode(d, add_special_tokens=False).ids)
        best = min(best, time.perf_counter() - t0)
    mb = len(data) / 1e6
    print(f"tokenizers load: {load_ms:.1f} ms, +{(rss1 - rss0) / 1024:.1f} MiB peak RSS")
    print(f"tokenizers encode: {total} tokens, {best * 1e3:.1f} ms (best of 3): "
          f"{mb / best:.2f} MB/s, {total / best:.0f} tokens/s (1 thread)")
    try:
        with open(os.path.join(out_dir, "nvlm_result.txt")) as f:
            n_mb, n_tok, n_ms = f.read().split()
        n_best = float(n_ms) / 1e3
        print(f"nvlm / tokenizers speed: {best / n_best:.2f}x; same token count: "
              f"{int(n_tok) == total}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
