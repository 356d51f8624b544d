#!/usr/bin/env python3
"""Generates the image module's oracle cases with pip-installed Pillow (and numpy):

  tests/data/image/grid_cases.txt    w h min_num max_num cols rows  (the reference's
                                      dynamic_preprocess grid choice, CPython set order)
  tests/data/image/resize_cases.txt  sw sh dw dh seed sha256         (Pillow BICUBIC resize of a
                                      pseudo-random RGB image, pixels from xorshift32(seed))
  tests/data/image/conv/*.png + conv_cases.txt   file w h sha256     (PNG color types and bit
                                      depths written by a minimal encoder here, decoded by
                                      Pillow's convert('RGB'))
  tests/data/image/exif/*.png + exif_cases.txt   file w h sha256     (eXIf orientation 1..8,
                                      after ImageOps.exif_transpose)

Run from the repository root: python3 tests/oracle/image_cases.py
"""
import hashlib
import io
import os
import random
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

OUT = "tests/data/image"


# ---- grid choice: the reference code (InternVL / NVLM-D README), restated -------------------
def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def grid(w, h, min_num, max_num, image_size=448):
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
        for j in range(1, n + 1) if i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    return find_closest_aspect_ratio(w / h, target_ratios, w, h, image_size)


def grid_cases():
    rng = random.Random(4)
    sizes = [(448, 448), (612, 612), (1000, 1000), (640, 480), (800, 600), (1024, 768),
             (4032, 3024), (1280, 720), (1920, 1080), (500, 1000), (3000, 1000), (5, 4),
             (560, 448), (800, 640), (600, 400), (3000, 120), (200, 1400), (1, 1),
             (1, 100000), (100000, 1), (65535, 65535)]
    # Exact ties: aspect ratios halfway between two candidate aspects, small and large images.
    aspects = sorted({i / j for i in range(1, 13) for j in range(1, 13)})
    for a, b in zip(aspects, aspects[1:]):
        mid = (a + b) / 2
        for hh in (8, 64, 100, 448, 896, 1500):
            ww = mid * hh
            if ww == int(ww) and ww >= 1:
                sizes.append((int(ww), hh))
    for _ in range(300):
        sizes.append((rng.randint(1, 5000), rng.randint(1, 5000)))
    lines = []
    for (w, h) in sizes:
        for (mn, mx) in [(1, 6), (1, 1), (1, 2), (1, 4), (1, 9), (1, 12), (2, 6), (3, 8)]:
            c, r = grid(w, h, mn, mx)
            lines.append(f"{w} {h} {mn} {mx} {c} {r}")
    with open(f"{OUT}/grid_cases.txt", "w") as f:
        f.write("# w h min_num max_num cols rows (tests/oracle/image_cases.py)\n")
        f.write("\n".join(lines) + "\n")
    return len(lines)


# ---- resize ------------------------------------------------------------------------------------
def xorshift_bytes(seed, n):
    """xorshift32, one byte (the top 8 bits) per step; the C test has the same generator."""
    out = bytearray(n)
    x = seed & 0xFFFFFFFF
    for i in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x >> 24
    return bytes(out)


def smooth_image(seed, w, h):
    """Noise plus smooth gradients, so resizing hits both clamps and mid values."""
    noise = np.frombuffer(xorshift_bytes(seed, w * h * 3), np.uint8).reshape(h, w, 3)
    return noise


def resize_cases():
    cases = [(37, 23, 448, 448), (448, 448, 448, 448), (1, 1, 448, 448), (600, 400, 1344, 896),
             (600, 400, 448, 448), (640, 320, 448, 448), (3000, 120, 448, 448),
             (3000, 120, 2688, 448), (200, 1400, 448, 2688), (200, 1400, 448, 448),
             (97, 103, 97, 448), (97, 103, 448, 103), (1000, 9, 448, 896), (13, 700, 31, 29),
             (448, 449, 448, 448), (449, 448, 448, 448), (2, 3, 5, 7), (1023, 767, 1344, 896)]
    lines = []
    for k, (sw, sh, dw, dh) in enumerate(cases):
        seed = 0x9E3779B9 ^ (k * 7919 + 1)
        a = smooth_image(seed, sw, sh)
        # The reference (Pillow <= 12.3, the goldens) always runs the horizontal pass first.
        # Pillow 13 runs the vertical pass first for some sizes (x upscaled, y reduced), which
        # changes the 8-bit intermediate; so the two passes are asked of Pillow one at a time.
        im = Image.fromarray(a, "RGB").resize((dw, sh), Image.BICUBIC)
        im = im.resize((dw, dh), Image.BICUBIC)
        digest = hashlib.sha256(np.asarray(im).tobytes()).hexdigest()
        lines.append(f"{sw} {sh} {dw} {dh} {seed} {digest}")
    with open(f"{OUT}/resize_cases.txt", "w") as f:
        f.write("# sw sh dw dh seed sha256-of-resized-RGB (tests/oracle/image_cases.py)\n")
        f.write("\n".join(lines) + "\n")
    return len(lines)


# ---- PNG conversion cases: a minimal PNG writer --------------------------------------------------
def chunk(tag, data):
    c = struct.pack(">I", len(data)) + tag + data
    return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(w, h, depth, ctype, rows, plte=None, trns=None, extra=b""):
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    out += extra
    raw = b"".join(b"\x00" + r for r in rows)
    out += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return out


def pack_bits(vals, depth):
    out = bytearray()
    acc = 0
    n = 0
    for v in vals:
        acc = (acc << depth) | v
        n += depth
        if n == 8:
            out.append(acc)
            acc = n = 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def conv_cases():
    os.makedirs(f"{OUT}/conv", exist_ok=True)
    rng = random.Random(7)
    w, h = 19, 11
    files = []
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
    for ctype, depths in [(0, [1, 2, 4, 8, 16]), (2, [8, 16]), (3, [1, 2, 4, 8]), (4, [8, 16]),
                          (6, [8, 16])]:
        for depth in depths:
            for variant in ("plain", "trns"):
                if variant == "trns" and ctype in (4, 6):
                    continue
                nch = channels[ctype]
                maxv = (1 << depth) - 1
                plte = trns = None
                if ctype == 3:
                    npal = min(1 << depth, 200)
                    plte = bytes(rng.randrange(256) for _ in range(npal * 3))
                    maxv = npal - 1
                    if variant == "trns":
                        trns = bytes(rng.randrange(256) for _ in range(min(npal, 5)))
                elif variant == "trns":
                    vals = [rng.randint(0, maxv) for _ in range(nch)]
                    trns = b"".join(struct.pack(">H", v) for v in vals)
                rows = []
                for y in range(h):
                    vals = []
                    for x in range(w):
                        for c in range(nch):
                            # Gray 16-bit: mostly small values so the clamp to 255 matters both ways.
                            if ctype == 0 and depth == 16 and rng.random() < 0.6:
                                vals.append(rng.randint(0, 300))
                            else:
                                vals.append(rng.randint(0, maxv))
                    if depth == 16:
                        rows.append(b"".join(struct.pack(">H", v) for v in vals))
                    elif depth == 8:
                        rows.append(bytes(vals))
                    else:
                        rows.append(pack_bits(vals, depth))
                data = png_bytes(w, h, depth, ctype, rows, plte, trns)
                name = f"ct{ctype}_d{depth}_{variant}.png"
                with open(f"{OUT}/conv/{name}", "wb") as f:
                    f.write(data)
                im = Image.open(io.BytesIO(data))
                rgb = np.asarray(im.convert("RGB"))
                files.append(f"{name} {w} {h} {hashlib.sha256(rgb.tobytes()).hexdigest()}")
    with open(f"{OUT}/conv_cases.txt", "w") as f:
        f.write("# file w h sha256-of-convert('RGB') (tests/oracle/image_cases.py)\n")
        f.write("\n".join(files) + "\n")
    return len(files)


def exif_cases():
    os.makedirs(f"{OUT}/exif", exist_ok=True)
    a = smooth_image(12345, 23, 17)
    lines = []
    for o in range(1, 9):
        im = Image.fromarray(a, "RGB")
        ex = Image.Exif()
        ex[0x0112] = o
        name = f"orient{o}.png"
        im.save(f"{OUT}/exif/{name}", exif=ex.tobytes())
        t = ImageOps.exif_transpose(Image.open(f"{OUT}/exif/{name}")).convert("RGB")
        lines.append(f"{name} {t.size[0]} {t.size[1]} "
                     f"{hashlib.sha256(np.asarray(t).tobytes()).hexdigest()}")
    with open(f"{OUT}/exif_cases.txt", "w") as f:
        f.write("# file w h sha256-after-exif_transpose (tests/oracle/image_cases.py)\n")
        f.write("\n".join(lines) + "\n")
    return len(lines)


if __name__ == "__main__":
    import PIL
    print("Pillow", PIL.__version__)
    print("grid", grid_cases())
    print("resize", resize_cases())
    print("conv", conv_cases())
    print("exif", exif_cases())
