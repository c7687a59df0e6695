"""Which codec imported images get: size and decode speed of candidate zarr codecs on real microscopy.

    python benchmarks/image_codec.py            # the shared data (../shared/data) and a synthetic 16-bit image

Every embed job decodes every chunk of its tiles' windows, so decoding is on the data path that feeds
the encoder (`gpu_check.py`'s supply); the import writes each chunk once. Each image is cut into
512 x 512 chunks (the default tile grid), encoded with each codec in turn and decoded three times on
one thread; reported: the compression ratio and the decode speed in raw MB per CPU-second.
Then the cost of reading one stored chunk of the synthetic image (a zarr v3 array on disk, 512 x 512
uint16 chunks): through zarr's indexing, and read and decoded directly as the window readers of the
embed jobs do (`tilesam.data.windows.chunk_decoder`), CPU ms a chunk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
import tifffile
import zarr
from _common import OUT, REPO
from large_run import render_piece
from numcodecs import Blosc, Zstd

from tilesam.data.io import IMAGE_COMPRESSORS
from tilesam.data.windows import chunk_decoder

# numcodecs' codecs, which zarr's ZstdCodec and BloscCodec call; level 0 is zstd's default (3)
CODECS = {
    "zstd (zarr's default)": Zstd(level=0),
    "blosc lz4 bitshuffle (tilesam)": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
    "blosc lz4 shuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
    "blosc zstd bitshuffle": Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
}
DATA = REPO.parent / "shared" / "data"
SETS = {  # name: files (2D images or 3D stacks)
    "EM cells (isbi2012)": ["isbi2012/volume.tif"],
    "EM mitochondria (epfl_mito)": ["epfl_mito/images/*.tif"],
    "LM nuclei (dsb2018)": ["dsb2018/images/*.tif"],
}


def chunks_of(images: list[np.ndarray], side: int = 512) -> list[np.ndarray]:
    """The chunks an import writes: (channels,) side x side of each plane (edge chunks short)."""
    planes = []
    for image in images:
        if image.ndim == 3 and image.shape[-1] in (3, 4):  # RGB(A): one chunk holds the channels, first
            planes.append(np.moveaxis(image, -1, 0))
        else:
            planes += list(image.reshape(-1, *image.shape[-2:]))
    return [
        np.ascontiguousarray(p[..., y : y + side, x : x + side])
        for p in planes
        for y in range(0, p.shape[-2], side)
        for x in range(0, p.shape[-1], side)
    ]


def measure(codec, chunks: list[np.ndarray]) -> tuple[float, float]:
    """(compression ratio, decode MB per CPU-second on one thread) of a codec on the chunks."""
    numcodecs.blosc.set_nthreads(1)
    encoded = [codec.encode(chunk) for chunk in chunks]
    raw = sum(chunk.nbytes for chunk in chunks)
    t0 = time.process_time()
    for _ in range(3):
        for e in encoded:
            codec.decode(e)
    seconds = (time.process_time() - t0) / 3
    return raw / sum(len(e) for e in encoded), raw / 1e6 / max(seconds, 1e-9)


def read_costs(image: np.ndarray, compressors, repeats: int = 5) -> tuple[float, float]:
    """CPU ms a chunk to read every 512 x 512 chunk of `image` stored with `compressors`: (zarr, direct)."""
    with tempfile.TemporaryDirectory() as tmp:
        array = zarr.create_array(f"{tmp}/a.zarr", shape=image.shape, chunks=(512, 512), dtype=image.dtype,
                                  compressors=compressors)  # fmt: skip
        array[...] = image
        keys = [(y, x) for y in range(image.shape[0] // 512) for x in range(image.shape[1] // 512)]
        decode = chunk_decoder(array)
        t0 = time.process_time()
        for _ in range(repeats):
            for y, x in keys:
                array[y * 512 : (y + 1) * 512, x * 512 : (x + 1) * 512]
        t1 = time.process_time()
        for _ in range(repeats):
            for key in keys:
                decode(key)
        t2 = time.process_time()
    n = repeats * len(keys)
    return 1000 * (t1 - t0) / n, 1000 * (t2 - t1) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT / "image_codec.md")
    args = parser.parse_args()
    sets = {}
    for name, patterns in SETS.items():
        files = [f for pattern in patterns for f in sorted(DATA.glob(pattern))][:20]
        if files:
            sets[name] = chunks_of([tifffile.imread(f) for f in files])
        else:
            print(f"skipped {name}: no {patterns} under {DATA}", file=sys.stderr)
    synthetic = render_piece((2048, 2048), 100)
    sets["synthetic nuclei, uint16 (gpu_check's image)"] = chunks_of([synthetic])
    lines = ["| data | chunks | dtype | codec | ratio | decode MB/CPU-s |", "|---|---|---|---|---|---|"]
    for name, chunks in sets.items():
        for codec_name, codec in CODECS.items():
            ratio, speed = measure(codec, chunks)
            lines.append(f"| {name} | {len(chunks)} | {chunks[0].dtype} | {codec_name} | {ratio:.2f} | {speed:.0f} |")
            print(lines[-1], flush=True)
    lines += [
        "",
        "| reading a stored chunk (synthetic, uint16) | through zarr, CPU ms | directly, CPU ms |",
        "|---|---|---|",
    ]
    for codec_name, compressors in [("zstd (zarr's default)", "auto"), ("blosc lz4 bitshuffle (tilesam)", IMAGE_COMPRESSORS)]:  # fmt: skip
        through_zarr, direct = read_costs(synthetic, compressors)
        lines.append(f"| {codec_name} | {through_zarr:.2f} | {direct:.2f} |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
