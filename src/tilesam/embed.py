"""Image embeddings of tiles: preprocessing, batched encoding, and resumable block stores.

One block store holds the embeddings of a run of consecutive tiles. It records
what made it (model and checksum, tile grid, the image's signature) and is
resumable (see `tilesam.data.stores`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from tqdm import tqdm

from tilesam.data import io, stores
from tilesam.tiling import TileGrid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provenance:
    """What an embedding store was made from; two stores are interchangeable iff equal."""

    model: str
    model_sha256: str
    img_size: int
    grid: dict
    block: int
    tiles_per_block: int
    image_signature: str
    dtype: str


def normalize(window: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """A window as the uint8 RGB image SAM expects: min-max to 0..255 over the image's range.

    The range is the whole image's (recorded at import), not the window's, so a
    tile is normalised identically in a block job and in a whole-image call, and
    a background-only tile is not stretched into noise.
    """
    lo, hi = intensity_range
    scaled = (window.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-12))
    img = np.clip(scaled, 0, 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img


def model_input(model: Sam, rgb: np.ndarray) -> torch.Tensor:
    """Resize (longest side to the model's input size), normalise and pad, as SamPredictor does."""
    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(rgb)
    x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
    return model.preprocess(x.float())


def _autocast(model: Sam, precision: str):
    if precision == "float32" or model.device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, precision))


@torch.no_grad()
def encode(model: Sam, batch: list[np.ndarray], precision: str = "float32") -> torch.Tensor:
    """Image embeddings (B, 256, 64, 64) of uint8 RGB windows, in one encoder pass."""
    x = torch.cat([model_input(model, rgb) for rgb in batch])
    with _autocast(model, precision):
        return model.image_encoder(x).float()


def embed_block(
    model: Sam,
    prov: Provenance,
    image_path: str | Path,
    grid: TileGrid,
    out: str | Path,
    *,
    batch_size: int = 4,
    precision: str = "float32",
) -> dict:
    """Embed the tiles of block `prov.block` into `out`, resuming a partial store; returns timing stats.

    Each tile's encoder seconds (its batch's, shared equally) are stored with it, so the stats
    of a resumed block count every tile, not only those of the last job. The next batch of
    windows is read in a background thread while the encoder runs on the current one.
    """
    info = io.read_info(image_path)
    image = zarr.open_array(str(Path(image_path) / "0"), mode="r")
    tiles = grid.block(prov.block, prov.tiles_per_block)
    dtype = prov.dtype
    root = stores.open_partial(out, "embeddings", asdict(prov), len(tiles))
    if "embeddings" not in root:
        root.create_array("embeddings", shape=(len(tiles), 256, 64, 64), chunks=(1, 256, 64, 64), dtype=dtype)
    done = root["done"][:]
    todo = [i for i in range(len(tiles)) if not done[i]]
    if len(todo) < len(tiles):
        log.info("resuming %s: %d of %d tiles already embedded", out, len(tiles) - len(todo), len(tiles))

    def load(idx: list[int]) -> list[np.ndarray]:
        return [
            normalize(io.read_window(image, tiles[i].window_slices(), info.channels), info.intensity_range) for i in idx
        ]

    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    with (
        ThreadPoolExecutor(max_workers=1) as reader,
        tqdm(total=len(tiles), initial=len(tiles) - len(todo), desc=f"embed block {prov.block}") as bar,
    ):
        pending = reader.submit(load, batches[0]) if batches else None
        for k, idx in enumerate(batches):
            windows = pending.result()
            pending = reader.submit(load, batches[k + 1]) if k + 1 < len(batches) else None
            t0 = time.perf_counter()
            emb = encode(model, windows, precision).cpu().numpy()
            per_tile = (time.perf_counter() - t0) / len(idx)  # one encoder pass: its tiles share it
            for j, i in enumerate(idx):
                root["embeddings"][i] = emb[j].astype(dtype)
                root["seconds"][i] = per_tile
                root["done"][i] = True  # written after the embedding: a killed job never marks a tile done early
            bar.update(len(idx))
    seconds = stores.tile_seconds(root)
    stats = {
        "tiles": len(tiles),
        "computed": len(todo),
        "encoder_seconds": float(np.nansum(seconds)),  # every tile's, this job's and any earlier job's
        "timed_tiles": int(np.isfinite(seconds).sum()),
        "device": str(model.device),
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
