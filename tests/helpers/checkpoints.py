"""Crafted checkpoint files for the tests of planning's bounded reads (issue 30, case 10)."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path


def write_zip_bomb(path: Path, size: int) -> Path:
    """A zip .pth whose data.pkl inflates to `size` bytes of zeros (1.5 GB: a 1.5 MB file) (no decoder key in it).

    Built without compressing 1.5 GB: after a full flush deflate forgets its history, so every
    MB of zeros compresses to the same bytes, which are written 1536 times.
    """
    zeros = bytes(2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()
    repeats = size // len(zeros)
    crc = 0
    for _ in range(repeats):
        crc = zlib.crc32(zeros, crc)
    name = b"archive/data.pkl"
    packed = len(block) * repeats + len(end)
    sizes = struct.pack("<III", crc, packed, size)
    with path.open("wb") as f:
        f.write(struct.pack("<IHHHHH", 0x04034B50, 20, 0, 8, 0, 0) + sizes + struct.pack("<HH", len(name), 0) + name)
        for _ in range(repeats):
            f.write(block)
        f.write(end)
        directory = f.tell()
        f.write(struct.pack("<IHHHHHH", 0x02014B50, 20, 20, 0, 8, 0, 0) + sizes)
        f.write(struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0) + name)
        listing = f.tell() - directory
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, listing, directory, 0))
    with zipfile.ZipFile(path) as archive:  # a valid zip: the member list says what it inflates to
        assert archive.getinfo("archive/data.pkl").file_size == size
    return path
