"""Minimal OME-Zarr (NGFF 0.5, zarr v3) writing: multiscale images and label images.

Written by hand rather than through ome-zarr-py so that level 0 can be filled
chunk by chunk by the caller (bounded memory) and the pyramid computed after,
also chunk by chunk, with dask.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr

NGFF_VERSION = "0.5"


def _axes(ndim: int, channels: bool) -> list[dict]:
    spatial = ["z", "y", "x"][-(ndim - int(channels)) :]
    axes = [{"name": "c", "type": "channel"}] if channels else []
    return axes + [{"name": a, "type": "space"} for a in spatial]


def create(
    path: str | Path,
    shape: tuple[int, ...],
    dtype,
    chunks: tuple[int, ...],
    *,
    channels: bool = False,
    overwrite: bool = True,
    attrs: dict | None = None,
) -> zarr.Array:
    """Create an OME-Zarr group with an empty level "0" and return that array.

    With `channels`, the first axis is the channel axis (OME's c,z,y,x order).
    The multiscales metadata is written by `build_pyramid` once level 0 is full.
    """
    root = zarr.open_group(str(path), mode="w" if overwrite else "a", zarr_format=3)
    if attrs:
        root.attrs.update(attrs)
    fill = 0 if np.issubdtype(np.dtype(dtype), np.integer) else 0.0
    return root.create_array("0", shape=shape, dtype=dtype, chunks=chunks, fill_value=fill, overwrite=True)


def build_pyramid(path: str | Path, *, labels: bool, channels: bool = False, min_size: int = 256) -> int:
    """Add 2x-downsampled levels ("1", "2", ...) of level "0" in yx until below `min_size`.

    Labels are downsampled by taking every second pixel (ids must stay ids);
    images by 2x2 means. Returns the number of levels. Writes the NGFF
    multiscales metadata (and image-label metadata for label images).
    """
    root = zarr.open_group(str(path), mode="a", zarr_format=3)
    level0 = root["0"]
    ndim = level0.ndim
    n_levels = 1
    current = da.from_zarr(level0)
    while min(current.shape[-2:]) // 2 >= min_size:
        if labels:
            current = current[..., ::2, ::2]
        else:
            factors = {ndim - 2: 2, ndim - 1: 2}
            trimmed = current[..., : current.shape[-2] // 2 * 2, : current.shape[-1] // 2 * 2]
            current = da.coarsen(np.mean, trimmed, factors).astype(level0.dtype)
        arr = root.create_array(
            str(n_levels), shape=current.shape, dtype=level0.dtype, chunks=level0.chunks, overwrite=True
        )
        da.store(current.rechunk(level0.chunks), arr, lock=False)
        current = da.from_zarr(arr)
        n_levels += 1
    scale_axes = ndim
    datasets = []
    for level in range(n_levels):
        scale = [1.0] * scale_axes
        scale[-1] = scale[-2] = float(2**level)
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    ome = dict(root.attrs.get("ome", {}))
    ome["version"] = NGFF_VERSION
    ome["multiscales"] = [{"axes": _axes(ndim, channels), "datasets": datasets, "name": Path(path).name}]
    if labels:
        ome["image-label"] = {"source": {"image": "../../"}}
    root.attrs["ome"] = ome
    return n_levels


def open_level0(path: str | Path) -> zarr.Array:
    """The full-resolution array of an OME-Zarr image or label image."""
    try:
        return zarr.open_array(str(Path(path) / "0"), mode="r")
    except (FileNotFoundError, zarr.errors.ArrayNotFoundError) as err:  # pragma: no cover - message only
        raise FileNotFoundError(f"{path} is not an OME-Zarr image written by tilesam (no level '0')") from err
