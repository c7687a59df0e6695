"""tilesam.resources: requests follow the work, never the config's nominal sizes, and a job that would
not fit is said at planning."""

from __future__ import annotations

import pytest
from test_plan import full_config

from tilesam.plan import Plan


def test_a_tile_larger_than_the_image_asks_for_the_image_not_the_tile():
    huge = Plan.from_config(full_config(segmentation={"tile_shape": [100000, 100000]})).resources
    default = Plan.from_config(full_config()).resources
    largest = max(r.shape[-2] * r.shape[-1] for r in huge.plan.images.values()) / 1e6
    assert huge._window_mpx() == pytest.approx(largest)  # clipped to the largest image, not 10^10 pixels
    assert huge.embed_mb("lite_medsam") <= default.embed_mb("lite_medsam") + 50 * largest
    assert huge.embed_minutes() < 60


def test_a_request_over_the_limit_is_one_error_naming_the_job():
    res = Plan.from_config(full_config()).resources
    largest = max(res.requests_mb().values())
    res.check(largest, "this machine's memory")  # fits exactly
    res.check(None, "")  # no limit known (a cluster without one)
    with pytest.raises(
        ValueError, match=r"the .* job would ask for \d+ MB of memory, more than 1000 MB \(the profile's\)"
    ):
        res.check(1000, "the profile's")


def test_tiles_per_block_auto_sizes_blocks_to_the_device(tmp_path):
    """`auto` (the default): a GPU job takes hundreds of tiles, a CPU job tens; a number is kept as written."""
    import tifffile

    volume = tmp_path / "vol.tif"
    tifffile.memmap(volume, shape=(16, 2048, 2048), dtype="uint8").flush()  # planning reads its header only
    config = full_config(datasets={"v": {"images": str(volume), "ndim": 3}}, models=["vit_b"])
    assert config["segmentation"]["tiles_per_block"] == "auto"
    gpu, cpu = (Plan.from_config({**config, "device": device}) for device in ("cuda", "cpu"))
    assert gpu.grid("v", "vol").n_tiles == 256  # 16 sections of 4 x 4 tiles of 512
    assert gpu.n_blocks("v", "vol") == 1 and gpu.tiling.block_size(256) == 256  # one job of 256 tiles
    assert 1 < cpu.tiling.tiles_per_block < 100 and cpu.n_blocks("v", "vol") == -(-256 // cpu.tiling.tiles_per_block)
    two = Plan.from_config({**config, "device": "cuda", "segmentation": {**config["segmentation"], "min_blocks": 2}})
    assert two.n_blocks("v", "vol") == 2  # min_blocks still keeps two local jobs busy
    written = Plan.from_config({**config, "segmentation": {**config["segmentation"], "tiles_per_block": 8}})
    assert written.tiling.tiles_per_block == 8 and written.n_blocks("v", "vol") == 32
    assert gpu.resources.embed_minutes() > cpu.resources.embed_minutes()  # requests follow the block size
