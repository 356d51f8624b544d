#!/usr/bin/env python3
"""Writes the hostile image corpus tests/data/image/hostile/ and its manifest hostile.txt:
one line per file, "file STATUS message-substring" (STATUS: OK, FORMAT, LIMIT). Each file is a
small fixture broken in one specific way. Run from the repository root.
"""
import os
import random
import struct
import zlib

SRC = "tests/data/images"
OUT = "tests/data/image/hostile"


def chunk(tag, data, crc=None):
    c = struct.pack(">I", len(data)) + tag + data
    if crc is None:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return c + struct.pack(">I", crc)


SIG = b"\x89PNG\r\n\x1a\n"


def ihdr(w, h, depth=8, ctype=2, interlace=0):
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))


def small_png(w=4, h=3, extra=b"", depth=8, ctype=2, rows=None, idat=None, plte=None):
    nch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    if rows is None:
        rows = [bytes((x * 40 + y * 7 + c) & 255 for x in range(w) for c in range(nch))
                for y in range(h)]
    raw = b"".join(b"\x00" + r for r in rows)
    out = SIG + ihdr(w, h, depth, ctype)
    if plte is not None:
        out += chunk(b"PLTE", plte)
    out += extra
    out += chunk(b"IDAT", zlib.compress(raw) if idat is None else idat)
    return out + chunk(b"IEND", b"")


def bomb(n):
    """zlib stream inflating to n zero bytes (about n / 1000 compressed)."""
    co = zlib.compressobj(9)
    block = bytes(1 << 20)
    out = b""
    for _ in range(n >> 20):
        out += co.compress(block)
    return out + co.flush()


def jpeg_segments(data):
    """(offset, marker, length) of the marker segments before SOS."""
    pos = 2
    segs = []
    while pos + 4 <= len(data):
        m = data[pos + 1]
        ln = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segs.append((pos, m, ln))
        if m == 0xDA:
            break
        pos += 2 + ln
    return segs


def patch(data, off, new):
    return data[:off] + new + data[off + len(new):]


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(2024)
    chelsea = open(f"{SRC}/chelsea_square_160.png", "rb").read()
    coffee = open(f"{SRC}/chelsea_422_127x121.jpg", "rb").read()
    prog = open(f"{SRC}/astronaut_progressive_151x139.jpg", "rb").read()
    cases = []

    def add(name, data, status, msg):
        with open(f"{OUT}/{name}", "wb") as f:
            f.write(data)
        cases.append(f"{name} {status} {msg}")

    add("empty.bin", b"", "FORMAT", "unknown image format")
    add("garbage.bin", bytes(rng.randrange(256) for _ in range(4096)), "FORMAT",
        "unknown image format")
    add("gif_header.gif", b"GIF89a" + bytes(64), "FORMAT", "unknown image format")
    # ---- PNG
    add("png_signature_only.png", SIG, "FORMAT", "truncated")
    add("png_truncated_ihdr.png", chelsea[:20], "FORMAT", "truncated")
    add("png_truncated_idat.png", chelsea[:len(chelsea) // 2], "FORMAT", "truncated")
    bad = bytearray(chelsea)
    bad[29] ^= 0xFF  # IHDR CRC
    add("png_crc_ihdr.png", bytes(bad), "FORMAT", "CRC")
    bad = bytearray(small_png(extra=chunk(b"tEXt", b"k\x00v", crc=0)))
    add("png_crc_ancillary.png", bytes(bad), "FORMAT", "CRC")
    bad = bytearray(chelsea)
    idat = chelsea.find(b"IDAT")
    ln = struct.unpack(">I", chelsea[idat - 4:idat])[0]
    bad[idat + 4 + ln] ^= 0x55  # first IDAT CRC
    add("png_crc_idat.png", bytes(bad), "FORMAT", "CRC")
    add("png_zero_width.png", small_png() .replace(ihdr(4, 3), ihdr(0, 3)), "FORMAT", "IHDR")
    add("png_zero_both.png", SIG + ihdr(0, 0) + chunk(b"IEND", b""), "FORMAT", "IHDR")
    add("png_width_2p31.png", SIG + ihdr(1 << 31, 1) + chunk(b"IEND", b""), "FORMAT",
        "out of range")
    add("png_dims_2p31_minus1.png", SIG + ihdr((1 << 31) - 1, (1 << 31) - 1) +
        chunk(b"IDAT", zlib.compress(b"")), "LIMIT", "exceeds")
    add("png_50000x50000.png", SIG + ihdr(50000, 50000) + chunk(b"IDAT", zlib.compress(b"\0" * 64)),
        "LIMIT", "max_pixels")
    add("png_9000x9000.png", SIG + ihdr(9000, 9000, 8, 0) + chunk(b"IDAT", zlib.compress(b"")),
        "LIMIT", "max_pixels")
    add("png_bad_depth.png", small_png().replace(ihdr(4, 3), ihdr(4, 3, 3, 2)), "FORMAT", "IHDR")
    add("png_bad_color_type.png", small_png().replace(ihdr(4, 3), ihdr(4, 3, 8, 5)), "FORMAT",
        "IHDR")
    add("png_palette_missing.png", small_png(ctype=3, rows=[bytes([0, 1, 2, 3])] * 3), "FORMAT",
        "PLTE")
    add("png_palette_index_oob.png",
        small_png(ctype=3, rows=[bytes([0, 1, 2, 200])] * 3, plte=bytes(range(12))), "FORMAT",
        "palette index 200")
    add("png_idat_not_zlib.png", small_png(idat=bytes(rng.randrange(256) for _ in range(40))),
        "FORMAT", "corrupt PNG")
    add("png_idat_short.png", small_png(idat=zlib.compress(b"\0" * 10)), "FORMAT",
        "Not enough image data")
    rows = [b"\x07" + bytes(12)] * 3
    add("png_bad_filter.png", small_png(idat=zlib.compress(b"".join(rows))), "FORMAT",
        "filter")
    add("png_chunk_len_huge.png", SIG + ihdr(4, 3) + struct.pack(">I", 0x7FFFFFF0) + b"IDAT",
        "FORMAT", "corrupt PNG")
    add("png_no_idat.png", SIG + ihdr(4, 3) + chunk(b"IEND", b""), "FORMAT", "IEND: out of place")
    # Zip bombs in ancillary chunks: skipped without inflating, the pixels decode normally.
    add("png_iccp_bomb.png", small_png(extra=chunk(b"iCCP", b"p\x00\x00" + bomb(64 << 20))),
        "OK", "")
    add("png_ztxt_bomb.png", small_png(extra=chunk(b"zTXt", b"k\x00\x00" + bomb(64 << 20))),
        "OK", "")
    # ---- JPEG
    add("jpg_soi_only.jpg", b"\xff\xd8\xff", "FORMAT", "corrupt JPEG")
    add("jpg_truncated_header.jpg", coffee[:300], "FORMAT", "corrupt JPEG")
    add("jpg_truncated_data.jpg", coffee[:len(coffee) // 2], "FORMAT", "truncated")
    add("jpg_truncated_progressive.jpg", prog[:len(prog) // 2], "FORMAT", "truncated")
    segs = jpeg_segments(coffee)
    sof = next(s for s in segs if s[1] == 0xC0)
    dqt = next(s for s in segs if s[1] == 0xDB)
    dht = next(s for s in segs if s[1] == 0xC4)
    add("jpg_bogus_marker_length.jpg", patch(coffee, dqt[0] + 2, b"\x00\x01"), "FORMAT",
        "Bogus marker length")
    add("jpg_marker_garbage.jpg", coffee[:2] + b"\xff\x01\xff\x4f\x12\x34" + coffee[2:],
        "FORMAT", "corrupt JPEG")
    add("jpg_two_soi.jpg", coffee[:2] + coffee, "FORMAT", "corrupt JPEG")
    add("jpg_height_zero.jpg", patch(coffee, sof[0] + 5, b"\x00\x00"), "FORMAT", "corrupt JPEG")
    add("jpg_width_zero.jpg", patch(coffee, sof[0] + 7, b"\x00\x00"), "FORMAT", "corrupt JPEG")
    add("jpg_65500x65500.jpg", patch(coffee, sof[0] + 5, b"\xff\xdc\xff\xdc"), "LIMIT",
        "max_pixels")
    add("jpg_zero_components.jpg", patch(coffee, sof[0] + 9, b"\x00"), "FORMAT", "corrupt JPEG")
    add("jpg_bad_huffman.jpg", patch(coffee, dht[0] + 5, b"\xff" * 16), "FORMAT",
        "corrupt JPEG")
    add("jpg_bad_sampling.jpg", patch(coffee, sof[0] + 11, b"\x55"), "FORMAT", "corrupt JPEG")
    with open("tests/data/image/hostile.txt", "w") as f:
        f.write("# file expected-status message-substring (tests/oracle/image_hostile.py)\n")
        f.write("\n".join(cases) + "\n")
    print(len(cases), "hostile files")


if __name__ == "__main__":
    main()
