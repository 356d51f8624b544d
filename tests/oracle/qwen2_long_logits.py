#!/usr/bin/env python3
"""Independent float32 reference of the Qwen2 decoder for tests/test_long_input.c.

Reads the tiny checkpoint's safetensors directly (own header parser, bf16 -> f32 by a 16-bit
shift), runs the Qwen2 decoder of the model spec (RMSNorm, rotate-half RoPE with rope_theta and
no rope_scaling, GQA, full causal attention, q/k/v biases, SiLU MLP, untied lm_head) in numpy
float32 over a deterministic 5,000-token id sequence and writes the ids and the logits of a
few positions to tests/data/long/qwen2_long_logits.safetensors:
    ids           I64 (5000,)
    positions     I64 (P,)        positions whose logits are stored
    logits        F32 (P, vocab)  logits of those positions
    twice_logits  F32 (vocab,)    last logits of case1's prompt ids twice in a row, with case1's
                                  golden proj_out spliced over both images' 1,792 pad tokens
                                  (two 7-tile images, 3,584 image rows, 3,746 tokens)
Before writing, it checks itself against the golden prefill logits of the reference code
(tests/data/golden: case3 text only, and case1/case4 with the golden proj_out rows spliced over
<|vision_pad|>) with the goldens' tolerance 2e-4 + 1e-4 |want|. Run from the repository root:
    python3 tests/oracle/qwen2_long_logits.py
Needs numpy only.
"""
import json
import os
import struct
import sys

import numpy as np

MODEL = "tests/data/tiny-nvlm-d"
GOLDEN = "tests/data/golden"
OUT = "tests/data/long/qwen2_long_logits.safetensors"
N_IDS = 5000
POSITIONS = [2099, 4095, 4096, 4999]
ATOL, RTOL = 2e-4, 1e-4


def read_safetensors(path):
    """name -> float32 or int64 numpy array (bf16 widened by a 16-bit shift)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = data[b:end]
        dt = e["dtype"]
        if dt == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif dt == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float32)
        elif dt == "I64":
            a = np.frombuffer(buf, dtype="<i8").astype(np.int64)
        else:
            raise ValueError("%s: dtype %s" % (name, dt))
        out[name] = a.reshape(e["shape"])
    return out


def load_model():
    cfg = json.load(open(os.path.join(MODEL, "config.json")))["llm_config"]
    index = json.load(open(os.path.join(MODEL, "model.safetensors.index.json")))
    w = {}
    for shard in sorted(set(index["weight_map"].values())):
        w.update(read_safetensors(os.path.join(MODEL, shard)))
    return cfg, w


def rmsnorm(x, weight, eps):
    var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (weight * (x / np.sqrt(var + np.float32(eps)))).astype(np.float32)


def rope_tables(n, head_dim, theta):
    """cos, sin (n, head_dim / 2): angle = fp32(pos) * fp32 inv_freq as an fp32 product."""
    exps = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exps)).astype(np.float32)
    ang = (np.arange(n).astype(np.float32)[:, None] * inv_freq[None, :]).astype(np.float32)
    a64 = ang.astype(np.float64)
    return np.cos(a64).astype(np.float32), np.sin(a64).astype(np.float32)


def rope(x, cos, sin):
    """x (n, heads, head_dim), rotate-half convention."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1).astype(np.float32)


def attention(q, k, v, n_kv):
    """q (n, H, hd), k/v (n, KV, hd): full causal attention, GQA q head h -> kv h // (H / KV)."""
    n, H, hd = q.shape
    group = H // n_kv
    scale = np.float32(1.0 / np.sqrt(np.float32(hd)))
    out = np.empty_like(q)
    block = 512
    for h in range(H):
        kh = k[:, h // group, :]
        vh = v[:, h // group, :]
        for r0 in range(0, n, block):
            r1 = min(n, r0 + block)
            s = (q[r0:r1, h, :] @ kh[:r1].T) * scale
            mask = np.arange(r1)[None, :] > np.arange(r0, r1)[:, None]
            s[mask] = -np.inf
            s = s - s.max(axis=1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=1, keepdims=True)
            out[r0:r1, h, :] = p @ vh[:r1]
    return out


def forward(cfg, w, ids, img_rows=None, img_id=None):
    """Logits (n, vocab) of every position of ids; img_rows replace the <|vision_pad|> rows."""
    pre = "language_model.model."
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    KV = cfg["num_key_value_heads"]
    hd = D // H
    eps = cfg["rms_norm_eps"]
    n = len(ids)
    h = w[pre + "embed_tokens.weight"][np.asarray(ids)].astype(np.float32)
    if img_rows is not None:
        pos = np.nonzero(np.asarray(ids) == img_id)[0]
        assert len(pos) == img_rows.shape[0]
        h[pos] = img_rows
    cos, sin = rope_tables(n, hd, cfg["rope_theta"])
    for layer in range(cfg["num_hidden_layers"]):
        p = pre + "layers.%d." % layer
        x = rmsnorm(h, w[p + "input_layernorm.weight"], eps)
        q = x @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]
        k = x @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]
        v = x @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]
        q = rope(q.reshape(n, H, hd), cos, sin)
        k = rope(k.reshape(n, KV, hd), cos, sin)
        ctx = attention(q, k, v.reshape(n, KV, hd).astype(np.float32), KV).reshape(n, D)
        h = h + ctx @ w[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, w[p + "post_attention_layernorm.weight"], eps)
        g = x @ w[p + "mlp.gate_proj.weight"].T
        u = x @ w[p + "mlp.up_proj.weight"].T
        a = (g / (np.float32(1.0) + np.exp(-g))) * u
        h = (h + a @ w[p + "mlp.down_proj.weight"].T).astype(np.float32)
    head = "language_model.lm_head.weight"
    if head not in w and cfg.get("tie_word_embeddings"):
        head = pre + "embed_tokens.weight"
    return (rmsnorm(h, w[pre + "norm.weight"], eps) @ w[head].T).astype(np.float32)


def close(name, got, want):
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    lim = ATOL + RTOL * np.abs(want.astype(np.float64))
    bad = int(np.sum(~(d <= lim)))
    print("%-40s max |diff| %.3g, %d of %d outside tolerance" % (name, d.max(), bad, d.size))
    return bad == 0


def vision_pad_id():
    tok = json.load(open(os.path.join(MODEL, "tokenizer.json")))
    return [t["id"] for t in tok["added_tokens"] if t["content"] == "<|vision_pad|>"][0]


def validate(cfg, w):
    img_id = vision_pad_id()
    ok = True
    for case in ["case3_text_only", "case1_multitile", "case4_two_images"]:
        g = read_safetensors(os.path.join(GOLDEN, case + ".safetensors"))
        ids = g["prompt_ids"].reshape(-1)
        rows = None
        if "proj_out" in g:
            rows = g["proj_out"].reshape(-1, cfg["hidden_size"])
        logits = forward(cfg, w, ids, rows, img_id)
        ok = close(case + " prefill_logits_last8", logits[-8:], g["prefill_logits_last8"]) and ok
    return ok


def make_ids(n, n_text):
    """Deterministic ids in [0, n_text): a 64-bit LCG, with earlier stretches repeated now and
    then (a long input repeats itself: names, boilerplate)."""
    x = 0x9E3779B97F4A7C15
    ids = []

    def nxt():
        nonlocal x
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        return x >> 33

    while len(ids) < n:
        if len(ids) > 200 and nxt() % 4 == 0:
            length = 16 + nxt() % 48
            start = nxt() % (len(ids) - length)
            ids.extend(ids[start:start + length])
        else:
            ids.extend(int(nxt() % n_text) for _ in range(32))
    return ids[:n]


def write_safetensors(path, tensors):
    header = {}
    blobs = []
    off = 0
    for name, (dtype, arr) in tensors.items():
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def main():
    cfg, w = load_model()
    if not validate(cfg, w):
        print("the reference does not match the goldens; nothing written")
        return 1
    # Plain BPE ids only (the tokenizer's added tokens start at 4000 in the tiny model).
    ids = make_ids(N_IDS, 4000)
    logits = forward(cfg, w, ids)
    pos = np.asarray(POSITIONS, dtype="<i8")
    g = read_safetensors(os.path.join(GOLDEN, "case1_multitile.safetensors"))
    one = g["prompt_ids"].reshape(-1)
    rows = g["proj_out"].reshape(-1, cfg["hidden_size"])
    twice = forward(cfg, w, np.concatenate([one, one]), np.concatenate([rows, rows]),
                    vision_pad_id())
    write_safetensors(OUT, {
        "ids": ("I64", np.asarray(ids, dtype="<i8")),
        "positions": ("I64", pos),
        "logits": ("F32", logits[pos].astype("<f4")),
        "twice_logits": ("F32", twice[-1].astype("<f4")),
    })
    print("wrote %s: %d ids, logits of positions %s" % (OUT, len(ids), POSITIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
