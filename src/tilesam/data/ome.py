"""OME-Zarr (NGFF 0.5, zarr v3) images and label images, filled chunk by chunk.

Level 0 is a zarr array that the caller fills chunk by chunk (the importer from
a dask array, the stitcher tile by tile with ids it only knows once the tiles'
matches are joined); `build_pyramid` then adds the lower levels, each computed
chunk by chunk from the stored level above, and writes the NGFF metadata. No
step holds more than a few chunks in memory.

Each lower level is computed chunk by chunk from the stored level above, with
numpy: every second pixel for labels (ids must stay ids), 2x2 means for
intensities, exactly as ome-zarr-py's `downscale_nearest` and `local_mean` do
(tests/data/test_ome.py checks both against them, and every store against
ome-zarr-models' 0.5 validation). The metadata is a few dicts written here.
Going through ome-zarr-py's dask functions and writers cost a stitch job about
0.6 CPU-s of imports (dask, ome_zarr's models) before any work, more than half
of its start-up. Its whole-image writers (`write_image`, `write_multiscale`,
`write_labels`) would also write level 0 from one numpy or dask array, which the
stitcher, filling level 0 tile by tile with ids it only knows once the tiles'
matches are joined, does not have.

Every array carries `dimension_names` equal to the multiscales `axes`, as 0.5
requires. Label images are not nested in their image's `labels/` group: images
(`results/images/`), ground truth (`results/labels/`) and segmentations
(`results/segmentation/`) are separate Snakemake outputs, and nesting would
have several jobs writing the image's store (its `labels` list) and a rerun of
the import deleting them. Instead a label store records the relative path to
its image as `image-label.source.image`, so readers (ome-zarr-py, napari) find
it; a label image written without an image claims no source.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from tilesam.stitch.chunks import chunk_regions, thread_map

NGFF_VERSION = "0.5"


def axis_names(ndim: int, channels: bool = False) -> list[str]:
    """OME's axis order for an array of `ndim` axes: (c,) (z,) y, x."""
    spatial = ["z", "y", "x"][-(ndim - int(channels)) :]
    return (["c"] if channels else []) + spatial


def _axes(ndim: int, channels: bool) -> list[dict]:
    return [{"name": a, "type": "channel" if a == "c" else "space"} for a in axis_names(ndim, channels)]


def _new_array(
    root: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    dtype,
    chunks: tuple[int, ...],
    names: list[str],
    compressors="auto",
) -> zarr.Array:
    fill = 0 if np.issubdtype(np.dtype(dtype), np.integer) else 0.0
    return root.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        fill_value=fill,
        dimension_names=names,
        compressors=compressors,
        overwrite=True,
    )


def create(
    path: str | Path,
    shape: tuple[int, ...],
    dtype,
    chunks: tuple[int, ...],
    *,
    channels: bool = False,
    overwrite: bool = True,
    attrs: dict | None = None,
    compressors="auto",
) -> zarr.Array:
    """Create an OME-Zarr group with an empty level "0" and return that array, for the caller to fill.

    With `channels`, the first axis is the channel axis (OME's c,z,y,x order). `compressors` as
    zarr's `create_array` takes them ("auto": zarr's default, zstd); the lower levels get level 0's.
    The multiscales metadata is written by `build_pyramid` once level 0 is full.
    """
    if not 2 <= len(shape) - int(channels) <= 3:
        raise ValueError(f"OME-Zarr images here are 2D or 3D (plus channels), got shape {shape}")
    root = zarr.open_group(str(path), mode="w" if overwrite else "a", zarr_format=3)
    if attrs:
        root.attrs.update(attrs)
    return _new_array(root, "0", tuple(shape), dtype, tuple(chunks), axis_names(len(shape), channels), compressors)


def _halve_yx(upper: np.ndarray, *, labels: bool) -> np.ndarray:
    """One 2x step in y and x of an even-sized block: every second pixel (labels) or 2x2 means (truncated, as
    skimage's `downscale_local_mean` then `astype` in ome-zarr-py's `local_mean`)."""
    if labels:
        return upper[..., ::2, ::2]
    h, w = upper.shape[-2] // 2, upper.shape[-1] // 2
    blocks = upper.reshape(*upper.shape[:-2], h, 2, w, 2)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(upper.dtype)


def _write_lower(upper: zarr.Array, lower: zarr.Array, *, labels: bool, workers: int) -> None:
    """Fill `lower` (half of `upper` in y, x; odd trailing rows/columns dropped) one output chunk at a time."""

    def fill(region: tuple[slice, ...]) -> None:
        source = region[:-2] + tuple(slice(2 * r.start, 2 * r.stop) for r in region[-2:])
        lower[region] = _halve_yx(upper[source], labels=labels)

    with thread_map(workers) as mapper:
        list(mapper(fill, chunk_regions(lower.shape, lower.chunks)))


def _datasets(n_levels: int, ndim: int, *, labels: bool) -> list[dict]:
    """Scale 2**level in y, x; images' means are centred on their 2x2 blocks, labels' samples are not."""
    datasets = []
    for level in range(n_levels):
        scale, translation = [1.0] * ndim, [0.0] * ndim
        scale[-2:] = [float(2**level)] * 2
        if not labels:
            translation[-2:] = [(2**level - 1) / 2] * 2
        transforms = [{"type": "scale", "scale": scale}]
        if any(translation):
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return datasets


def source_path(labels: str | Path, image: str | Path) -> str:
    """`image` relative to the label store `labels`, as `image-label.source.image` wants it (posix, relative)."""
    return Path(os.path.relpath(Path(image).absolute(), Path(labels).absolute())).as_posix()


def build_pyramid(
    path: str | Path,
    *,
    labels: bool,
    channels: bool = False,
    min_size: int = 256,
    image: str | Path | None = None,
    workers: int | None = None,
) -> int:
    """Add 2x-downsampled levels ("1", "2", ...) of level "0" in yx until below `min_size`; write the metadata.

    Labels are downsampled by taking every second pixel (ids must stay ids),
    images by 2x2 means; each level is read from the stored level above, one
    output chunk at a time on `workers` threads (default: the machine's cores).
    Returns the number of levels. For label images, `image` is the image they
    annotate: its path relative to `path` becomes the `image-label` source.
    """
    root = zarr.open_group(str(path), mode="a", zarr_format=3)
    level0 = root["0"]
    if labels and (channels or level0.dtype.kind not in "iu"):
        raise ValueError(f"{path}: label images are integer and have no channel axis, got {level0.dtype}")
    names = axis_names(level0.ndim, channels)
    if level0.metadata.dimension_names != tuple(names):
        raise ValueError(
            f"{path}: level 0 has dimension names {level0.metadata.dimension_names}, the pyramid was asked for {names}"
            " (create and build_pyramid must agree on `channels`)"
        )
    n_levels, current = 1, level0
    while min(current.shape[-2:]) // 2 >= min_size:
        shape = (*current.shape[:-2], current.shape[-2] // 2, current.shape[-1] // 2)
        chunks = tuple(min(c, s) for c, s in zip(level0.chunks, shape))
        lower = _new_array(root, str(n_levels), shape, level0.dtype, chunks, names, level0.compressors)
        _write_lower(current, lower, labels=labels, workers=workers or os.cpu_count() or 1)
        current, n_levels = lower, n_levels + 1
    multiscale = {
        "datasets": _datasets(n_levels, level0.ndim, labels=labels),
        "name": Path(path).name,
        "axes": _axes(level0.ndim, channels),
    }
    meta: dict = {"version": NGFF_VERSION, "multiscales": [multiscale]}
    if labels:
        meta["image-label"] = {"version": NGFF_VERSION}
        if image is not None:
            meta["image-label"]["source"] = {"image": source_path(path, image)}
    root.attrs["ome"] = meta
    return n_levels


def level0_path(group: zarr.Group) -> str | None:
    """Path of the full-resolution array in an OME-Zarr group of any version (0.4: `multiscales`, 0.5: under `ome`).

    ome-zarr-py names its levels "s0", "s1", ...; tilesam "0", "1", ...; a plain
    zarr group with an array "0" counts as level 0 too. None when neither.
    """
    attrs = group.attrs.asdict()
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        return str(multiscales[0]["datasets"][0]["path"])
    return "0" if "0" in group else None


def open_level0(path: str | Path) -> zarr.Array:
    """The full-resolution array of an OME-Zarr image or label image (its first multiscales dataset)."""
    try:
        root = zarr.open_group(str(path), mode="r")
        level0 = root[level0_path(root) or "0"]
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as err:
        raise FileNotFoundError(f"{path} is not an OME-Zarr image (no multiscales and no level '0')") from err
    if not isinstance(level0, zarr.Array):
        raise FileNotFoundError(f"{path}: its level 0 is a group, not an array")
    return level0
