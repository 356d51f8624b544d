#!/usr/bin/env python3
"""Times Pillow doing what bench_image.c times, on the same files: decode + convert('RGB'),
the reference's dynamic_preprocess (grid resize, crops, thumbnail) and the float32
normalization (numpy, as ToTensor + Normalize). One thread. Usage:
bench_image_pillow.py [DIR] [REPEATS]
"""
import io
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import numpy as np
    import PIL
    from PIL import Image
except ImportError as e:  # pragma: no cover
    print(f"SKIP Pillow comparison: {e}")
    sys.exit(0)

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def grid(w, h, max_num=6, size=448):
    ratios = sorted({(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1)
                     for j in range(1, n + 1) if 1 <= i * j <= max_num}, key=lambda x: x[0] * x[1])
    best, best_diff, aspect = (1, 1), float("inf"), w / h
    for r in ratios:
        d = abs(aspect - r[0] / r[1])
        if d < best_diff:
            best, best_diff = r, d
        elif d == best_diff and w * h > 0.5 * size * size * r[0] * r[1]:
            best = r
    return best


def preprocess(data, size=448):
    im = Image.open(io.BytesIO(data)).convert("RGB")
    c, r = grid(*im.size)
    resized = im.resize((size * c, size * r), Image.BICUBIC)
    tiles = [resized.crop(((k % c) * size, (k // c) * size, (k % c + 1) * size,
                           (k // c + 1) * size)) for k in range(c * r)]
    if c * r != 1:
        tiles.append(im.resize((size, size), Image.BICUBIC))
    out = np.empty((len(tiles), 3, size, size), np.float32)
    for i, t in enumerate(tiles):
        a = np.asarray(t).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        out[i] = (a - MEAN) / STD
    return out


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "build/bench-image"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"Pillow {PIL.__version__} (numpy {np.__version__}), 1 thread, best of {reps}")
    for name, f in [("12 MP JPEG 4032x3024", "photo_4032x3024.jpg"),
                    ("1000x1000 PNG", "photo_1000x1000.png")]:
        data = open(os.path.join(d, f), "rb").read()
        best = float("inf")
        best_dec = float("inf")
        n = 0
        for _ in range(reps):
            t0 = time.perf_counter()
            Image.open(io.BytesIO(data)).convert("RGB")
            t1 = time.perf_counter()
            n = len(preprocess(data))
            t2 = time.perf_counter()
            if t2 - t1 < best:
                best, best_dec = t2 - t1, t1 - t0
        print(f"{name:22s} {n} tiles: total {best * 1e3:.1f} ms (decode alone {best_dec * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
