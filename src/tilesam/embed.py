"""Image embeddings of tiles: preprocessing, batched encoding, and resumable block stores.

One block store holds the embeddings of a run of consecutive tiles. It records
what made it (model and checksum, tile grid, the image's signature) and is
resumable (see `tilesam.data.stores`).
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from tqdm import tqdm

from tilesam.data import io, stores
from tilesam.data.windows import WindowReader
from tilesam.resize import resized_shape
from tilesam.tiling import TileGrid

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Provenance:
    """What an embedding store was made from; two stores are interchangeable iff equal.

    The encoder is named by its content (weights and input normalisation), not by the model: a
    model finetuned with a frozen encoder reads its base model's stores (`Plan.encoder_model`).
    """

    encoder_sha256: str
    img_size: int
    grid: dict
    block: int
    tiles_per_block: int
    image_signature: str
    dtype: str


def levels(window: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """A window's grey levels as SAM sees them: min-max to 0..255 over the image's range, rounded (uint8).

    The range is the whole image's (recorded at import), not the window's, so a tile is normalised
    identically in a block job and in a whole-image call, and a background-only tile is not stretched
    into noise. 8- and 16-bit windows go through a table of the same arithmetic on every value.
    """
    lo, hi = intensity_range
    if window.dtype in (np.uint8, np.uint16):
        return np.take(_level_table(window.dtype.str, float(lo), float(hi)), window)
    return _to_levels(window, lo, hi)


def _to_levels(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (values.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _level_table(dtype: str, lo: float, hi: float) -> np.ndarray:
    return _to_levels(np.arange(np.iinfo(dtype).max + 1, dtype=dtype), lo, hi)


def normalize(window: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """A window as the uint8 RGB image SAM expects: its :func:`levels`, grey repeated to three channels."""
    return rgb(levels(window, intensity_range))


def rgb(grey: np.ndarray) -> np.ndarray:
    """Grey levels (H, W) as three equal channels (H, W, 3); an RGB image as it is."""
    return np.repeat(grey[..., None], 3, axis=-1) if grey.ndim == 2 else grey


def model_input(model: Sam, rgb: np.ndarray) -> torch.Tensor:
    """Resize (longest side to the model's input size), normalise and pad, as SamPredictor does (on the host).

    PIL's bilinear resize, called as SamPredictor's ResizeLongestSide calls it through torchvision
    (whose import costs a job about 1 CPU-s), so the pixels are the same.
    """
    from PIL import Image

    h, w = resized_shape(rgb.shape[0], rgb.shape[1], int(model.image_encoder.img_size))
    resized = np.array(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
    return model.preprocess(x.float())


def device_input(model: Sam, windows: list[np.ndarray]) -> torch.Tensor:
    """Windows' grey levels (:func:`levels`, uint8) -> the encoder's (B, 3, S, S) input, on the model's device.

    The same steps as :func:`rgb` then :func:`model_input`: grey repeated to RGB, the longest side
    resized to S (bilinear, antialiased, rounded to 0..255 as PIL does), normalised with the model's
    mean/std, padded with zeros. The host has read the window and looked up its levels (a byte a
    pixel crosses to a GPU); the rest runs on the device.
    On a CPU the resize is torch's uint8 kernel, which computes as PIL does (the same pixels when
    enlarging, one grey level on a few % of them when shrinking); on a GPU it is in float32
    (one grey level apart from PIL on up to ~20 % of the pixels).
    """
    if any(w.dtype != np.uint8 for w in windows):
        raise TypeError(
            f"device_input takes grey levels (uint8, see levels()), got {sorted({str(w.dtype) for w in windows})}"
        )
    side = int(model.image_encoder.img_size)
    device = model.device
    batch = torch.empty((len(windows), 3, side, side), device=device)
    for i, window in enumerate(windows):
        x = torch.from_numpy(window).to(device, non_blocking=True)  # a byte a pixel
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)  # (C, H, W): 1 grey or 3 RGB channels
        h, w = resized_shape(x.shape[-2], x.shape[-1], side)
        if device.type == "cpu":  # PIL's arithmetic: uint8, three channels, channels last
            x = x.expand(3, -1, -1)[None].contiguous(memory_format=torch.channels_last)
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        else:
            x = F.interpolate(x[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
            x = x.clamp_(0, 255).round_()
        out = batch[i]
        out[:, :h, :w].copy_(x).sub_(model.pixel_mean).div_(model.pixel_std)
        out[:, h:, :].zero_()
        out[:, :h, w:].zero_()
    return batch


def resolve_precision(precision: str, model: Sam) -> str:
    """``auto``: bfloat16 for a ViT encoder (vit_b/l/h) on a GPU that supports it, else float32.

    The TinyViT encoders (vit_t, LiteMedSAM) stay float32: they cost little on a GPU, and in
    bfloat16 LiteMedSAM's box masks matched float32's at IoU 0.987-0.993 only (CPU autocast,
    three synthetic scenes) and its finetuned AIS instances at 0.965, short of the 0.99 asked of
    the faster arithmetic; a vit_b's AIS instances matched at 0.999 (`benchmarks/precision_check.py`).
    """
    if precision != AUTO:
        return precision
    if model.device.type == "cuda" and torch.cuda.is_bf16_supported() and autocast_encoder(model):
        return "bfloat16"
    return "float32"


def autocast_encoder(model: Sam) -> bool:
    """Whether ``auto`` runs this model's encoder in bfloat16 on a GPU that has it: a ViT, not TinyViT
    (`benchmarks/precision_check.py` measures both)."""
    return type(model.image_encoder).__name__ != "TinyViT"


def _autocast(model: Sam, precision: str):
    """The encoder's arithmetic: float32, or autocast to bfloat16 (CPU and GPU) or float16 (GPU)."""
    precision = resolve_precision(precision, model)
    if precision == "float32" or (model.device.type != "cuda" and precision != "bfloat16"):
        return nullcontext()
    return torch.autocast(model.device.type, dtype=getattr(torch, precision))


@torch.no_grad()
def encode(model: Sam, batch: list[np.ndarray], precision: str = "float32") -> torch.Tensor:
    """Image embeddings (B, 256, 64, 64) of uint8 RGB windows, in one encoder pass."""
    return encode_input(model, torch.cat([model_input(model, rgb) for rgb in batch]), precision)


@torch.no_grad()
def encode_input(model: Sam, x: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """Image embeddings (B, 256, 64, 64), float32, of the encoder's prepared input (B, 3, S, S)."""
    with _autocast(model, precision):
        return model.image_encoder(x).float()


#: Host bytes per tile of a batch besides the window itself: its float32 embedding (256 x 64 x 64)
#: as the encoder returns it and as stored (a cast copy).
_EMBEDDING_BYTES = 2 * 256 * 64 * 64 * 4
#: Share of the GPU memory left free after the first tile that a batch may take (the rest is slack
#: for the allocator's fragmentation and cuDNN workspaces).
_GPU_SHARE = 0.8


def host_bytes_per_tile(window_shape: tuple[int, int], channels: int, itemsize: int) -> int:
    """Host memory one tile of a batch holds on a GPU job: the read window, its uint8 RGB copy, embeddings.

    Twice, since the next batch is read while the encoder runs on the current one.
    """
    pixels = int(window_shape[0]) * int(window_shape[1])
    return 2 * (pixels * (max(channels, 1) * itemsize + 3) + _EMBEDDING_BYTES)


def auto_batch_size(
    device: torch.device,
    *,
    tiles_left: int,
    gpu_bytes_per_tile: int | None = None,
    gpu_bytes_free: int | None = None,
    host_bytes_per_tile: int = 0,
    mem_mb: float | None = None,
    rss_mb: float = 0.0,
) -> int:
    """Tiles per encoder batch for `embeddings.batch_size: auto`.

    On a CPU a batch buys no speed (the encoder's matrix products already use every thread) and
    costs about 2.5 GB per vit_b tile, so 1. On a GPU the largest batch whose activations
    (``gpu_bytes_per_tile``, measured on the first tile) fit in ``_GPU_SHARE`` of the free GPU
    memory, and whose host buffers fit in what is left of the job's memory request (``mem_mb``,
    minus the process's resident memory ``rss_mb``); never more than the tiles left, never below 1.
    """
    if device.type != "cuda" or not gpu_bytes_per_tile or gpu_bytes_free is None:
        return 1
    fit = int(_GPU_SHARE * gpu_bytes_free // max(gpu_bytes_per_tile, 1))
    if mem_mb is not None and host_bytes_per_tile > 0:
        fit = min(fit, int(max(mem_mb - rss_mb, 0.0) * 2**20 // host_bytes_per_tile))
    return max(1, min(fit, tiles_left))


def _gpu_probe(model: Sam) -> tuple[int, int]:
    """(activation bytes of the batch just run, free bytes now incl. what torch's cache holds but does not use)."""
    peak = torch.cuda.max_memory_allocated(model.device) - torch.cuda.memory_allocated(model.device)
    free, _ = torch.cuda.mem_get_info(model.device)
    cached = torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)
    return int(peak), int(free + cached)


def embed_block(
    model: Sam,
    prov: Provenance,
    image_path: str | Path,
    grid: TileGrid,
    out: str | Path,
    *,
    batch_size: int | str = AUTO,
    precision: str = "float32",
    mem_mb: float | None = None,
    on_device: bool | None = None,
) -> dict:
    """Embed the tiles of block `prov.block` into `out`, resuming a partial store; returns timing stats.

    Each tile's encoder seconds (its batch's, shared equally) are stored with it, so the stats
    of a resumed block count every tile, not only those of the last job. A background thread reads
    the next batch of windows while the encoder runs on the current one, and another writes the
    last batch's embeddings: one batch in flight each way, so memory stays flat whatever the block's
    size. ``on_device`` (default: on a GPU) moves the raw windows to the device and resizes and
    normalises them there (:func:`device_input`); else the host does it as SamPredictor does.
    ``batch_size: auto`` is 1 on a CPU; on a GPU the first tile runs alone, its measured activation
    memory sets the batch for the rest (`auto_batch_size`), within the job's memory request
    ``mem_mb`` where given.
    """
    info = io.read_info(image_path)
    image = zarr.open_array(str(Path(image_path) / "0"), mode="r")
    tiles = grid.block(prov.block, prov.tiles_per_block)
    dtype = prov.dtype
    root = stores.open_partial(out, "embeddings", asdict(prov), len(tiles))
    if "embeddings" not in root:  # uncompressed: float embeddings barely compress, and zstd slowed the data path
        root.create_array(
            "embeddings", shape=(len(tiles), 256, 64, 64), chunks=(1, 256, 64, 64), dtype=dtype, compressors=None
        )
    done = root["done"][:]
    todo = [i for i in range(len(tiles)) if not done[i]]
    if len(todo) < len(tiles):
        log.info("resuming %s: %d of %d tiles already embedded", out, len(tiles) - len(todo), len(tiles))
    cuda = model.device.type == "cuda"
    on_device = cuda if on_device is None else on_device

    # used by the reader thread alone; each chunk decoded and mapped to grey levels once
    read = WindowReader(image, info.channels, transform=functools.partial(levels, intensity_range=info.intensity_range))

    def load(idx: list[int]) -> list[np.ndarray]:
        windows = [read(tiles[i].window_slices()) for i in idx]
        return windows if on_device else [rgb(w) for w in windows]

    def run(windows: list[np.ndarray]) -> torch.Tensor:
        if on_device:
            return encode_input(model, device_input(model, windows), precision)
        return encode(model, windows, precision)

    # opened once: `root[name]` reads the array's metadata from disk on every access
    embeddings_array, seconds_array, done_array = root["embeddings"], root["seconds"], root["done"]
    # every chunk written as it is: zarr's check for a chunk of fill values compared all 4 MB of each
    embeddings_array = embeddings_array.with_config({"write_empty_chunks": True})

    def write(idx: list[int], emb: np.ndarray, per_tile_seconds: float) -> int:
        for j, i in enumerate(idx):
            embeddings_array[i] = emb[j].astype(dtype, copy=False)
        # then the batch's seconds and done flags, one zarr call each (a call costs about a ms of CPU):
        # done after the embeddings, so a killed job never marks a tile done early
        seconds_array.oindex[idx] = np.full(len(idx), per_tile_seconds)
        done_array.oindex[idx] = True
        return len(idx)

    auto = batch_size == AUTO
    size = 1 if auto else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be at least 1 or {AUTO!r}, got {batch_size!r}")
    start, sizes = 0, []
    written: Future | None = None
    with (
        ThreadPoolExecutor(max_workers=1) as reader,
        ThreadPoolExecutor(max_workers=1) as writer,
        tqdm(total=len(tiles), initial=len(tiles) - len(todo), desc=f"embed block {prov.block}") as bar,
    ):
        idx = todo[:size]
        pending = reader.submit(load, idx) if idx else None
        while idx:
            windows = pending.result()
            if auto and cuda and start == 0:
                torch.cuda.reset_peak_memory_stats(model.device)
            t0 = time.perf_counter()
            emb = run(windows).cpu().numpy()
            per_tile_seconds = (time.perf_counter() - t0) / len(idx)  # one encoder pass: its tiles share it
            sizes.append(len(idx))
            if auto and cuda and start == 0:
                per_tile, free = _gpu_probe(model)
                window = tiles[idx[0]].window_shape
                size = auto_batch_size(
                    model.device,
                    tiles_left=len(todo) - len(idx),
                    gpu_bytes_per_tile=per_tile,
                    gpu_bytes_free=free,
                    host_bytes_per_tile=host_bytes_per_tile(window, info.channels, image.dtype.itemsize),
                    mem_mb=mem_mb,
                    rss_mb=peak_mem_mb(),
                )
                log.info("batch_size auto: %d (%.0f MB of GPU activations per tile)", size, per_tile / 2**20)
            finished, start = idx, start + len(idx)
            idx = todo[start : start + size]
            pending = reader.submit(load, idx) if idx else None
            if written is not None:
                bar.update(written.result())  # one batch being written at a time
            written = writer.submit(write, finished, emb, per_tile_seconds)
        if written is not None:
            bar.update(written.result())
    seconds = stores.tile_seconds(root)
    stats = {
        "tiles": len(tiles),
        "computed": len(todo),
        "encoder_seconds": float(np.nansum(seconds)),  # every tile's, this job's and any earlier job's
        "timed_tiles": int(np.isfinite(seconds).sum()),
        "device": str(model.device),
        "batch_sizes": sorted(set(sizes)),
        "peak_mem_mb": peak_mem_mb(),
    }
    root.attrs["stats"] = stats
    stores.finish(out)
    return stats


def peak_mem_mb() -> float:
    """Peak resident memory of this process so far (what a job's benchmark file calls max_rss)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_embedding(root: zarr.Group, i: int) -> torch.Tensor:
    """The embedding of the i-th tile of a block store as a float32 (1, 256, 64, 64) tensor."""
    return torch.from_numpy(root["embeddings"][i].astype(np.float32))[None]
