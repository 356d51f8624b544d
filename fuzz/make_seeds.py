#!/usr/bin/env python3
"""Writes the small seed corpus of fuzz/fuzz_safetensors.c into fuzz/seeds/ (committed)."""
import json
import struct


def st(header, data=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


seeds = {
    "empty_header": st({}),
    "metadata": st({"__metadata__": {"format": "pt"}}),
    "one_u8": st({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]}}, b"abc"),
    "mixed": st({
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]},
        "i": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]},
        "z": {"dtype": "F16", "shape": [0, 5], "data_offsets": [32, 32]},
    }, bytes(range(32))),
    "overlap": st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                   "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"x" * 6),
    "huge_dims": st({"a": {"dtype": "F32", "shape": [4294967296, 4294967296],
                           "data_offsets": [0, 4]}}, b"xxxx"),
}
for name, blob in seeds.items():
    with open("fuzz/seeds/" + name + ".safetensors", "wb") as f:
        f.write(blob)
print(len(seeds), "seeds")
