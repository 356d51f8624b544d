#!/usr/bin/env python3
"""Independent float32 reference of the FP8 weight scheme for tests/test_fp8.c.

The seven projections of every Qwen2 layer (q/k/v/o_proj, gate/up/down_proj) are quantized here
from the tiny checkpoint's bf16 values by the scheme of docs/fp8.md, written independently of
the C code: scale[n] = float32(max_k |W[n,k]|) / float32(448) (1 where the row is all zero),
q = E4M3(float32(W / scale)) rounded to nearest even (np.rint on the exact quotient by the
step of q's binade, in float64), saturating at 448; the model then runs in float32 with weights
q * scale (tests/oracle/qwen2_long_logits.py's decoder). Everything else stays as stored. The
image case splices the golden projector output of the reference code (tests/data/golden) over
<|vision_pad|>: the vision encoder and projector are not quantized. Writes
tests/data/fp8/fp8_logits.safetensors:
    <case>.ids            I64 (n,)        prompt ids then the golden greedy step tokens
    <case>.n_prompt       I64 (1,)
    <case>.logits         F32 (n - n_prompt + 1, vocab)  logits of the last prompt position and
                                          of every later one (teacher-forced over the golden
                                          greedy step tokens, 8 of them)
for case3_text_only and case1_multitile, and long300 (300 plain ids, a 291-token prompt then
9 teacher-forced steps).
Run from the repository root: python3 tests/oracle/fp8_logits.py   (needs numpy only)
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qwen2_long_logits as q2  # noqa: E402

OUT = "tests/data/fp8/fp8_logits.safetensors"
PROJ = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "mlp.down_proj.weight"]


def e4m3_round(v):
    """float32 array -> float32 values of E4M3 fn (RNE, saturating at +-448)."""
    a = np.abs(v.astype(np.float64))
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(e, -6.0)               # below 2^-6: subnormal steps of 2^-9
    step = np.exp2(e - 3.0)
    r = np.rint(a / step) * step          # np.rint: round half to even
    r = np.minimum(r, 448.0)
    return (np.sign(v) * r).astype(np.float32)


def quantize(w):
    w = w.astype(np.float32)
    mx = np.max(np.abs(w), axis=1)
    scale = np.where(mx > 0, mx / np.float32(448.0), np.float32(1.0)).astype(np.float32)
    q = e4m3_round((w / scale[:, None]).astype(np.float32))
    return (q * scale[:, None]).astype(np.float32)


def main():
    cfg, w = q2.load_model()
    for name in list(w):
        if name.startswith("language_model.model.layers.") and any(name.endswith(p) for p in PROJ):
            w[name] = quantize(w[name])
    img_id = q2.vision_pad_id()
    out = {}
    for case in ["case3_text_only", "case1_multitile"]:
        g = q2.read_safetensors(os.path.join(q2.GOLDEN, case + ".safetensors"))
        prompt = g["prompt_ids"].reshape(-1)
        steps = g["step_tokens"].reshape(-1)[:8]
        ids = np.concatenate([prompt, steps])
        rows = g["proj_out"].reshape(-1, cfg["hidden_size"]) if "proj_out" in g else None
        logits = q2.forward(cfg, w, ids, rows, img_id)
        out[case + ".ids"] = ("I64", ids.astype("<i8"))
        out[case + ".n_prompt"] = ("I64", np.asarray([len(prompt)], dtype="<i8"))
        out[case + ".logits"] = ("F32", logits[len(prompt) - 1:].astype("<f4"))
    ids = np.asarray(q2.make_ids(300, 4000), dtype="<i8")
    logits = q2.forward(cfg, w, ids)
    out["long300.ids"] = ("I64", ids)
    out["long300.n_prompt"] = ("I64", np.asarray([291], dtype="<i8"))
    out["long300.logits"] = ("F32", logits[290:].astype("<f4"))
    q2.write_safetensors(OUT, out)
    print("wrote %s" % OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
