"""The classical baseline: Otsu foreground and a seeded watershed of its distance transform (no model).

Every SAM row of a benchmark needs a floor: what a few lines of scikit-image get on the same
images, tiled and stitched the same way. The recipe is the textbook nuclei pipeline:

1. one Otsu threshold for the whole image, from a histogram streamed over its chunks (a
   per-tile threshold would cut different foregrounds in neighbouring tiles and invent objects
   in background-only tiles); `foreground: auto` takes the smaller side of it as objects;
2. per tile window (tile + halo): Gaussian smoothing (`sigma`), the threshold, the Euclidean
   distance transform of the foreground;
3. seeds: the h-maxima of the distance map (`h` pixels: two touching round objects keep two
   seeds when the neck between them is at least h thinner than their radii; a component with no
   such maximum is one object), a watershed of the inverted distance inside the foreground,
   objects under `min_size` pixels dropped.

The window labels go into block stores of the same layout as the models' segmentation, so the
stitcher joins them across tiles exactly as it joins SAM's. sigma and h are the two settings
that decide the result; `search_classical` picks them on a validation split like AMG's search.
Deterministic (no randomness anywhere) and cheap: milliseconds per 256-pixel tile on a CPU.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

from tilesam.config import ClassicalGrid, ClassicalParams, StitchParams
from tilesam.metrics import segmentation_scores
from tilesam.tiling import Tile, TileGrid

MODEL = METHOD = "classical"  # its name in the tables: model and method
N_BINS = 256


@dataclass(frozen=True)
class Foreground:
    """The whole image's foreground rule: pixels above (bright) or below the threshold."""

    threshold: float
    bright: bool

    def mask(self, gray: np.ndarray) -> np.ndarray:
        return gray > self.threshold if self.bright else gray < self.threshold


def gray(window: np.ndarray) -> np.ndarray:
    """A (H, W) or (H, W, C) window as one float channel (the channels' mean)."""
    window = np.asarray(window, dtype=np.float32)
    return window.mean(axis=-1) if window.ndim == 3 else window


def foreground_from_histogram(counts: np.ndarray, edges: np.ndarray, side: str) -> Foreground:
    """Otsu's threshold of a histogram; `auto` calls the side with fewer pixels the objects."""
    counts = np.asarray(counts)
    centres = (edges[:-1] + edges[1:]) / 2
    if np.count_nonzero(counts) < 2:  # a constant image: nothing is foreground
        return Foreground(float(edges[-1]), True)
    threshold = float(threshold_otsu(hist=(counts, centres)))
    above = counts[centres > threshold].sum()
    bright = side == "bright" or (side == "auto" and above <= counts.sum() - above)
    return Foreground(threshold, bool(bright))


def image_foreground(image: str | Path, side: str) -> Foreground:
    """The foreground rule of an imported image, from a histogram streamed chunk by chunk."""
    import dask.array as da

    from tilesam.data import io, ome

    info = io.read_info(image)
    arr = da.from_zarr(ome.open_level0(image))
    if info.channels > 1:
        arr = arr.astype(np.float32).mean(axis=0)
    lo, hi = info.intensity_range
    counts, edges = da.histogram(arr, bins=N_BINS, range=(lo, hi if hi > lo else lo + 1))
    return foreground_from_histogram(counts.compute(), edges, side)


def distance_map(window: np.ndarray, foreground: Foreground, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(foreground mask, Euclidean distance to the background) of a window after smoothing."""
    smooth = gaussian(gray(window), sigma=sigma, preserve_range=True) if sigma > 0 else gray(window)
    mask = foreground.mask(smooth)
    return mask, ndimage.distance_transform_edt(mask)


def split_objects(mask: np.ndarray, distance: np.ndarray, h: float, min_size: int) -> np.ndarray:
    """Watershed of the inverted distance, seeded by its h-maxima, inside the mask (uint32 labels).

    A foreground component without an h-maximum (thinner than h) is one object, not lost.
    """
    if not mask.any():
        return np.zeros(mask.shape, np.uint32)
    seeds, n_seeds = ndimage.label(h_maxima(distance, h))
    components, n_components = ndimage.label(mask)
    seeded = np.zeros(n_components + 1, bool)
    seeded[components[seeds > 0]] = True
    lonely = ~seeded[components] & (components > 0)
    seeds[lonely] = n_seeds + components[lonely]
    labels = watershed(-distance, seeds, mask=mask)
    if min_size > 1:
        small = np.bincount(labels.ravel()) < min_size
        small[0] = False
        labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.uint32)


def segment_window(window: np.ndarray, foreground: Foreground, params: ClassicalParams) -> np.ndarray:
    """Instance labels of one tile window."""
    mask, distance = distance_map(window, foreground, params.sigma)
    return split_objects(mask, distance, params.h, params.min_size)


def _peak_mem_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def segment_block(
    image: str | Path,
    grid: TileGrid,
    block: int,
    tiles_per_block: int,
    out: str | Path,
    foreground: Foreground,
    params: ClassicalParams,
) -> dict:
    """Segment every tile of a block into `<out>` (arrays `t<i>`), the layout the stitcher reads."""
    from tilesam.data import io, ome, stores
    from tilesam.data.windows import WindowReader

    info = io.read_info(image)
    pixels = ome.open_level0(image)
    tiles = grid.block(block, tiles_per_block)
    provenance = {
        "model": MODEL,
        "method": METHOD,
        "grid": grid.to_dict(),
        "block": block,
        "tiles_per_block": tiles_per_block,
        "image_signature": info.signature,
        "params": asdict(params),
        "foreground": asdict(foreground),
    }
    root = stores.open_partial(out, "segmentation", provenance, len(tiles))
    done = root["done"][:]
    seconds = 0.0
    read = WindowReader(pixels, info.channels)  # each chunk decoded once, not for every window it touches
    for i, tile in enumerate(tiles):
        if done[i]:
            continue
        t0 = time.perf_counter()
        labels = segment_window(read(tile.window_slices()), foreground, params)
        seconds += time.perf_counter() - t0
        root.create_array(f"t{i}", data=labels, chunks=labels.shape, overwrite=True)
        root["done"][i] = True
    stats = {
        "tiles": len(tiles),
        "computed": int((~done).sum()),
        "segment_seconds": seconds,
        "encoder_seconds": None,
        "device": "cpu",
        "peak_mem_mb": _peak_mem_mb(),
    }
    root.attrs["stats"] = stats
    stores.finish(out)
    return stats


@dataclass
class SearchImage:
    """One validation image: its tile grid, a reader of tile windows, its foreground rule and ground truth."""

    name: str
    grid: TileGrid
    window_of: Callable[[Tile], np.ndarray]
    foreground: Foreground
    gt: np.ndarray


def search_image(image: str | Path, gt: str | Path, grid: TileGrid, side: str) -> SearchImage:
    """A validation image of the search: its windows read on demand, its ground truth in memory."""
    from tilesam.data import io, ome
    from tilesam.data.datasets import stem

    info, pixels = io.read_info(image), ome.open_level0(image)

    def window_of(tile: Tile) -> np.ndarray:
        return io.read_window(pixels, tile.window_slices(), info.channels)

    return SearchImage(stem(image), grid, window_of, image_foreground(image, side), ome.open_level0(gt)[...])


def _settings(grid: ClassicalGrid) -> Iterator[tuple[float, list[float]]]:
    for sigma in sorted(set(grid.sigma_values)):
        yield sigma, sorted(set(grid.h_values))


def search_classical(
    images: list[SearchImage],
    params: ClassicalParams,
    grid: ClassicalGrid | None = None,
    stitch_params: StitchParams | None = None,
) -> pd.DataFrame:
    """Mean mSA over the images of every (sigma, h) of the grid, best first.

    The distance map is computed once per sigma and tile; each h only reseeds the watershed.
    Ties go to the smaller sigma and h (the less processed setting).
    """
    from tilesam.stitch.tiles import stitch_in_memory

    grid = grid or ClassicalGrid()
    stitch_params = stitch_params or StitchParams()
    rows = []
    for image in images:
        windows = {tile.id: image.window_of(tile) for tile in image.grid.tiles()}
        for sigma, hs in _settings(grid):
            maps = {t: distance_map(w, image.foreground, sigma) for t, w in windows.items()}
            for h in hs:
                tiles = {t: split_objects(mask, dist, h, params.min_size) for t, (mask, dist) in maps.items()}
                msa = segmentation_scores(image.gt, stitch_in_memory(image.grid, tiles, stitch_params)).msa
                rows.append({"image": image.name, "sigma": sigma, "h": h, "mSA": msa})
    table = pd.DataFrame(rows).groupby(["sigma", "h"], as_index=False)["mSA"].mean()
    order = np.lexsort((table["h"].to_numpy(), table["sigma"].to_numpy(), -table["mSA"].to_numpy()))
    return table.iloc[order].reset_index(drop=True)
