#!/usr/bin/env python3
"""Independent numpy model of NVLM_PRECISION_FAST for tests/test_precision.c.

The fast precision's rounding, and nothing else: the input of every projection is rounded to
bf16 (round to nearest even) - the ViT patch embedding, qkv, proj, fc1, fc2, the projector's
two linears, the decoder's q/k/v/o, gate/up/down and lm_head - and multiplied by the bf16
weights as stored, products summed in float32; K (after RoPE) and V are rounded to bf16 as
they enter the KV cache. Norms, softmax, RoPE, GELU/SiLU, the residual stream and attention
math stay float32. The model follows /work/shared/spec/NVLM-D.md (InternViT with the padded
heads and the QK-norm statistic over the first hidden_size features, pixel shuffle v2, mlp1,
the Qwen2 decoder as tests/oracle/qwen2_long_logits.py) on the tiny checkpoint.

Teacher-forced: for a golden case it runs prompt_ids + step_tokens[:15] in one pass and keeps
the logits of the 16 positions whose next token the goldens record (step_logits). With the
rounding switched off the same code must reproduce the goldens (vit_out, pixel_shuffle_out,
proj_out, step_logits within 2e-4 + 1e-4 |want|) before anything is written. Writes
tests/data/fast/fast_logits.safetensors:
    <case>.step_logits  F32 (16, vocab)  for case3_text_only and case2_single_tile
    case2_single_tile.vit_hidden_states  F32 (3, 1, 1025, D)  the input of each ViT layer
    case3_text_only.llm_layer_outputs    F32 (3, n_prompt, D) each decoder layer's output
Run from the repository root: python3 tests/oracle/fast_precision_logits.py  (numpy only).
"""
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qwen2_long_logits import (GOLDEN, MODEL, read_safetensors, rmsnorm, rope,  # noqa: E402
                               rope_tables, vision_pad_id, write_safetensors)

OUT = "tests/data/fast/fast_logits.safetensors"
CASES = ["case3_text_only", "case2_single_tile"]
ATOL, RTOL = 2e-4, 1e-4


def bf16(a):
    """float32 -> nearest bf16 (ties to even), returned as float32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return r.astype(np.uint32).view(np.float32).reshape(np.shape(a))


class Model:
    def __init__(self, fast):
        self.fast = fast
        cfg = json.load(open(os.path.join(MODEL, "config.json")))
        self.cfg = cfg
        index = json.load(open(os.path.join(MODEL, "model.safetensors.index.json")))
        self.w = {}
        for shard in sorted(set(index["weight_map"].values())):
            self.w.update(read_safetensors(os.path.join(MODEL, shard)))

    def linear(self, x, name, bias=None):
        """x (n, K) . W^T (+ b): bf16 x bf16 products (exact in float32), float32 sums."""
        w = self.w[name]
        w = w.reshape(w.shape[0], -1)
        xi = bf16(x) if self.fast else x.astype(np.float32)
        y = (xi @ w.T).astype(np.float32)
        if bias is not None:
            y = (y + self.w[bias]).astype(np.float32)
        return y

    def cache(self, x):
        return bf16(x) if self.fast else x


def gelu(x):
    x64 = x.astype(np.float64)
    erf = np.frompyfunc(math.erf, 1, 1)
    return (0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)).astype(np.float64))).astype(np.float32)


def softmax_rows(s):
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)


def vit(m, pix, hidden=None):
    """pixel_values (T, 3, 448, 448) -> last hidden state without CLS (T, 1024, D); hidden
    (a list) gets the input of every layer (embeddings first), as vit_hidden_states."""
    vc = m.cfg["vision_config"]
    D, p, eps = vc["hidden_size"], vc["patch_size"], vc["layer_norm_eps"]
    w = m.w
    pre = "vision_model."
    T, C, H, W = pix.shape
    g = H // p
    # Stride-p convolution as patches (row-major) x features (c, ky, kx).
    cols = pix.reshape(T, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(T * g * g, C * p * p)
    pe = m.linear(cols, pre + "embeddings.patch_embedding.weight",
                  pre + "embeddings.patch_embedding.bias").reshape(T, g * g, D)
    cls = np.broadcast_to(w[pre + "embeddings.class_embedding"].reshape(1, 1, D), (T, 1, D))
    h = (np.concatenate([cls, pe], axis=1) + w[pre + "embeddings.position_embedding"]).astype(
        np.float32)
    n = h.shape[1]
    for layer in range(vc["num_hidden_layers"]):
        if hidden is not None:
            hidden.append(h.copy())
        lp = pre + "encoder.layers.%d." % layer
        hp = w[lp + "attn.q_norm.weight"].shape[0]   # padded heads x head_dim
        hd = D // vc["num_attention_heads"]
        heads = hp // hd
        x = rmsnorm(h, w[lp + "norm1.weight"], eps).reshape(T * n, D)
        qkv = m.linear(x, lp + "attn.qkv.weight")
        q, k, v = qkv[:, :hp], qkv[:, hp:2 * hp], qkv[:, 2 * hp:]

        def qk_norm(t, name):
            var = np.mean(t[:, :D] * t[:, :D], axis=-1, keepdims=True, dtype=np.float32)
            return (w[name] * (t / np.sqrt(var + np.float32(eps)))).astype(np.float32)

        q = qk_norm(q, lp + "attn.q_norm.weight").reshape(T, n, heads, hd)
        k = qk_norm(k, lp + "attn.k_norm.weight").reshape(T, n, heads, hd)
        v = v.reshape(T, n, heads, hd)
        scale = np.float32(1.0 / math.sqrt(hd))
        ctx = np.empty((T, n, heads, hd), dtype=np.float32)
        for t in range(T):
            for hh in range(heads):
                s = (q[t, :, hh, :] @ k[t, :, hh, :].T) * scale
                ctx[t, :, hh, :] = softmax_rows(s) @ v[t, :, hh, :]
        a = m.linear(ctx.reshape(T * n, hp), lp + "attn.proj.weight", lp + "attn.proj.bias")
        h = (h + w[lp + "ls1"] * a.reshape(T, n, D)).astype(np.float32)
        x = rmsnorm(h, w[lp + "norm2.weight"], eps).reshape(T * n, D)
        f = gelu(m.linear(x, lp + "mlp.fc1.weight", lp + "mlp.fc1.bias"))
        a = m.linear(f, lp + "mlp.fc2.weight", lp + "mlp.fc2.bias")
        h = (h + w[lp + "ls2"] * a.reshape(T, n, D)).astype(np.float32)
    return h[:, 1:, :]


def pixel_shuffle_v2(x, scale=0.5):
    """InternVL pixel_shuffle (ps_version v2) on (T, h, w, c)."""
    n, ww, hh, c = x.shape
    x = x.reshape(n, ww, int(hh * scale), int(c / scale)).transpose(0, 2, 1, 3)
    x = x.reshape(n, int(hh * scale), int(ww * scale), int(c / (scale * scale)))
    return x.transpose(0, 2, 1, 3)


def projector(m, vit_out):
    T, P, D = vit_out.shape
    g = int(round(math.sqrt(P)))
    s = pixel_shuffle_v2(vit_out.reshape(T, g, g, D), m.cfg["downsample_ratio"])
    s = np.ascontiguousarray(s).reshape(T * (g // 2) ** 2, -1).astype(np.float32)
    mu = s.mean(axis=-1, keepdims=True, dtype=np.float32)
    var = ((s - mu) ** 2).mean(axis=-1, keepdims=True, dtype=np.float32)
    x = ((s - mu) / np.sqrt(var + np.float32(1e-5)) * m.w["mlp1.0.weight"] +
         m.w["mlp1.0.bias"]).astype(np.float32)
    hid = gelu(m.linear(x, "mlp1.1.weight"))
    return s, m.linear(hid, "mlp1.3.weight")


def decoder(m, ids, img_rows, img_id, layers=None):
    """Logits (n, vocab) of every position; img_rows replace the <|vision_pad|> rows; layers (a
    list) gets each layer's output, as llm_layer_outputs."""
    cfg = m.cfg["llm_config"]
    w = m.w
    pre = "language_model.model."
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = D // H
    eps = cfg["rms_norm_eps"]
    n = len(ids)
    h = w[pre + "embed_tokens.weight"][np.asarray(ids)].astype(np.float32)
    if img_rows is not None:
        pos = np.nonzero(np.asarray(ids) == img_id)[0]
        assert len(pos) == img_rows.shape[0]
        h[pos] = img_rows
    cos, sin = rope_tables(n, hd, cfg["rope_theta"])
    scale = np.float32(1.0 / math.sqrt(hd))
    mask = np.triu(np.ones((n, n), dtype=bool), 1)
    for layer in range(cfg["num_hidden_layers"]):
        p = pre + "layers.%d." % layer
        x = rmsnorm(h, w[p + "input_layernorm.weight"], eps)
        q = m.linear(x, p + "self_attn.q_proj.weight", p + "self_attn.q_proj.bias")
        k = m.linear(x, p + "self_attn.k_proj.weight", p + "self_attn.k_proj.bias")
        v = m.linear(x, p + "self_attn.v_proj.weight", p + "self_attn.v_proj.bias")
        q = rope(q.reshape(n, H, hd), cos, sin)
        k = m.cache(rope(k.reshape(n, KV, hd), cos, sin))
        v = m.cache(v.reshape(n, KV, hd))
        ctx = np.empty((n, H, hd), dtype=np.float32)
        for hh in range(H):
            g = hh // (H // KV)
            s = (q[:, hh, :] @ k[:, g, :].T) * scale
            s[mask] = -np.inf
            ctx[:, hh, :] = softmax_rows(s) @ v[:, g, :]
        h = (h + m.linear(ctx.reshape(n, D), p + "self_attn.o_proj.weight")).astype(np.float32)
        x = rmsnorm(h, w[p + "post_attention_layernorm.weight"], eps)
        gt = m.linear(x, p + "mlp.gate_proj.weight")
        up = m.linear(x, p + "mlp.up_proj.weight")
        a = ((gt / (np.float32(1.0) + np.exp(-gt))) * up).astype(np.float32)
        h = (h + m.linear(a, p + "mlp.down_proj.weight")).astype(np.float32)
        if layers is not None:
            layers.append(h.copy())
    return m.linear(rmsnorm(h, w[pre + "norm.weight"], eps), "language_model.lm_head.weight")


def close(name, got, want):
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    lim = ATOL + RTOL * np.abs(want.astype(np.float64))
    bad = int(np.sum(~(d <= lim)))
    print("%-44s max |diff| %.3g, %d of %d outside tolerance" % (name, d.max(), bad, d.size))
    return bad == 0


def run_case(m, case, check):
    g = read_safetensors(os.path.join(GOLDEN, case + ".safetensors"))
    ids = g["prompt_ids"].reshape(-1)
    steps = g["step_tokens"].reshape(-1)
    rows = None
    ok = True
    trace = {}
    if "pixel_values" in g:
        hidden = []
        vo = vit(m, g["pixel_values"].astype(np.float32), hidden)
        trace["vit_hidden_states"] = np.stack(hidden)
        if check:
            ok = close(case + " vit_hidden_states", trace["vit_hidden_states"],
                       g["vit_hidden_states"]) and ok
        shuf, rows = projector(m, vo)
        if check:
            ok = close(case + " vit_out", vo, g["vit_out"]) and ok
            ok = close(case + " pixel_shuffle_out", shuf.reshape(g["pixel_shuffle_out"].shape),
                       g["pixel_shuffle_out"]) and ok
            ok = close(case + " proj_out", rows.reshape(g["proj_out"].shape), g["proj_out"]) and ok
    full = np.concatenate([ids, steps[:-1]])
    layers = []
    logits = decoder(m, full, rows, vision_pad_id(), layers)[len(ids) - 1:]
    # Causal: the prompt rows of a teacher-forced pass are those of a prompt-only prefill.
    trace["llm_layer_outputs"] = np.stack(layers)[:, :len(ids), :]
    if check and "llm_layer_outputs" in g:
        ok = close(case + " llm_layer_outputs", trace["llm_layer_outputs"],
                   g["llm_layer_outputs"]) and ok
    if check:
        ok = close(case + " step_logits (teacher-forced)", logits, g["step_logits"]) and ok
    return ok, logits, g, trace


def main():
    exact = Model(fast=False)
    ok = True
    for case in CASES:
        ok = run_case(exact, case, True)[0] and ok
    if not ok:
        print("the exact model does not reproduce the goldens; nothing written")
        return 1
    fast = Model(fast=True)
    out = {}
    for case in CASES:
        _, logits, g, trace = run_case(fast, case, False)
        want = g["step_logits"].astype(np.float64)
        rel = np.linalg.norm(logits - want, axis=1) / np.linalg.norm(want, axis=1)
        print("%-20s fast vs f32 golden: rel-L2 per step max %.3g mean %.3g; greedy agree %d/16"
              % (case, rel.max(), rel.mean(),
                 int(np.sum(np.argmax(logits, axis=1) == np.argmax(want, axis=1)))))
        out[case + ".step_logits"] = ("F32", logits.astype("<f4"))
        # The first stages, before bf16 rounding steps pile up: ViT layer inputs (image case)
        # and decoder layer outputs of the prompt (text case).
        if case == "case2_single_tile":
            out[case + ".vit_hidden_states"] = ("F32", trace["vit_hidden_states"].astype("<f4"))
        else:
            out[case + ".llm_layer_outputs"] = ("F32", trace["llm_layer_outputs"].astype("<f4"))
        for k, v in trace.items():
            gk = g.get(k)
            if gk is not None:
                for i in range(v.shape[0]):
                    d = np.abs(v[i] - gk[i]).max()
                    print("%-20s %s[%d]: fast vs f32 golden max |diff| %.3g" % (case, k, i, d))
    write_safetensors(OUT, out)
    print("wrote %s" % OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
