"""Resumable block stores: a partial store made for something else is moved aside, never reused or lost."""

from __future__ import annotations

import logging

import numpy as np
import zarr

from tilesam.data import stores

PROV = {"model": "lite_medsam", "grid": {"tile_shape": [128, 128]}, "block": 0}


def _partial(out, provenance, n_tiles=3, done=(0,)):
    root = stores.open_partial(out, "embeddings", provenance, n_tiles)
    root.create_array("data", shape=(n_tiles,), dtype="f4", fill_value=0)
    for i in done:
        root["data"][i] = 7.0
        root["seconds"][i] = 1.5
        root["done"][i] = True
    return root


def test_a_matching_partial_store_resumes_with_its_tiles_and_their_seconds(tmp_path):
    out = tmp_path / "block0.zarr"
    _partial(out, PROV)
    root = stores.open_partial(out, "embeddings", PROV, 3)
    assert list(root["done"][:]) == [True, False, False]
    np.testing.assert_array_equal(stores.tile_seconds(root), [1.5, np.nan, np.nan])
    assert root["data"][0] == 7.0


def test_a_partial_store_of_other_parameters_is_moved_aside_and_restarted(tmp_path, caplog):
    out = tmp_path / "block0.zarr"
    _partial(out, PROV)
    other = {**PROV, "grid": {"tile_shape": [256, 256]}}
    with caplog.at_level(logging.WARNING, logger="tilesam"):
        root = stores.open_partial(out, "embeddings", other, 3)
    assert not root["done"][:].any() and "data" not in root  # a fresh store
    assert root.attrs["tilesam"]["embeddings"] == other
    aside = sorted(tmp_path.glob("block0.zarr.stale-*"))
    assert len(aside) == 1
    kept = zarr.open_group(str(aside[0]), mode="r")  # what the old parameters computed is all still there
    assert kept["data"][0] == 7.0 and kept.attrs["tilesam"]["embeddings"] == PROV
    message = caplog.text
    assert str(stores.partial_path(out)) in message and str(aside[0]) in message
    assert "grid" in message and "256" in message  # why: the field that differs, both values


def test_a_store_killed_before_its_flags_were_written_is_moved_aside(tmp_path, caplog):
    out = tmp_path / "block0.zarr"
    zarr.open_group(str(stores.partial_path(out)), mode="w")  # a group, nothing else yet
    with caplog.at_level(logging.WARNING, logger="tilesam"):
        root = stores.open_partial(out, "embeddings", PROV, 2)
    assert root["done"].shape == (2,) and len(list(tmp_path.glob("block0.zarr.stale-*"))) == 1
    assert "killed" in caplog.text


def test_two_stale_stores_in_one_second_keep_both(tmp_path):
    out = tmp_path / "block0.zarr"
    for n in (1, 2):
        _partial(out, {**PROV, "block": n})
        stores.open_partial(out, "embeddings", {**PROV, "block": 9}, 3)
        stores.partial_path(out).rename(tmp_path / f"fresh{n}")
    assert len(list(tmp_path.glob("block0.zarr.stale-*"))) == 2


def test_a_store_another_process_writes_is_refused_naming_it_and_untouched(tmp_path):
    """An orphaned job of a killed snakemake and the rerun's job never write one store at once."""
    import subprocess
    import sys

    import pytest

    out = tmp_path / "block0.zarr"
    _partial(out, PROV)
    stores.unlock(out)
    code = (
        "import sys, time; from tilesam.data import stores; stores.lock(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            stores.StoreLocked, match=rf"block0.zarr is being written by another process \(pid {holder.pid}\)"
        ):
            stores.open_partial(out, "embeddings", PROV, 3)
        assert list(zarr.open_group(str(stores.partial_path(out)))["done"][:]) == [True, False, False]
    finally:
        holder.kill()
        holder.wait()
    root = stores.open_partial(out, "embeddings", PROV, 3)  # the holder is gone, and so is its lock
    assert list(root["done"][:]) == [True, False, False]
    stores.finish(out)
    assert out.exists() and not stores.partial_path(out).exists()
