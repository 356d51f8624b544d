#!/usr/bin/env python3
"""Independent listing of safetensors files for tests/test_safetensors.c.

Reads each file with the `safetensors` package (not our reader) and writes, per tensor, the
dtype, shape, data offsets and an FNV-1a 64-bit hash of its bytes to
tests/data/safetensors/listing.json. Run from the repository root:
    python3 tests/oracle/safetensors_listing.py
"""
import glob
import json
import struct

from safetensors import safe_open  # noqa: F401  (validates the files the same way)

FILES = sorted(glob.glob("tests/data/golden/*.safetensors")) + sorted(
    glob.glob("tests/data/golden/preprocess/*.safetensors")) + sorted(
    glob.glob("tests/data/tiny-nvlm-d/*.safetensors"))


def fnv1a_fast(data):
    h = 0xcbf29ce484222325
    p = 0x100000001b3
    m = 0xffffffffffffffff
    for b in data:
        h = ((h ^ b) * p) & m
    return h


out = []
for path in FILES:
    with safe_open(path, "np"):
        pass
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    tensors = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        tensors.append({"name": name, "dtype": e["dtype"], "shape": e["shape"],
                        "begin": b, "end": en, "fnv1a": "%016x" % fnv1a_fast(data[b:en])})
    tensors.sort(key=lambda t: (t["begin"], t["end"]))
    out.append({"path": path, "data_bytes": len(data), "tensors": tensors})

with open("tests/data/safetensors/listing.json", "w") as f:
    json.dump(out, f, indent=1)
print(len(out), "files,", sum(len(o["tensors"]) for o in out), "tensors")
