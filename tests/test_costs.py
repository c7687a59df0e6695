"""Block sizes from the cost table: tile work at least 20x a job's fixed cost, min_blocks and max_tiles obeyed."""

import math

import pytest

from tilesam.costs import COSTS, METHODS, Costs, block_size, costs_for, tile_seconds

ARCHITECTURES = sorted({a for a, _ in COSTS})


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("method", ["ais", "amg"])
def test_each_job_of_a_block_works_at_least_ratio_times_its_fixed_cost(architecture, device, method):
    costs = costs_for(architecture, device)
    size = block_size(10**7, architecture, device, method)
    for stage in ("embed", method):  # a block is an embed job and a segment job
        assert size * tile_seconds(costs, stage) >= 20 * costs.fixed * 0.999
    cheapest = min(tile_seconds(costs, s) for s in ("embed", method))
    assert size * cheapest < 1.01 * 20 * costs.fixed + 2 * cheapest  # and not much more


def test_a_gpu_gets_hundreds_of_tiles_a_job_for_a_volume_and_a_cpu_keeps_its_parallelism():
    n_tiles = 16 * 4 * 4  # 16 x 2048 x 2048 in 512-pixel tiles
    assert block_size(n_tiles, "vit_b", "cuda", "ais") == n_tiles  # one job: hundreds of tiles
    assert block_size(n_tiles, "vit_b", "cuda:0", "ais", min_blocks=2) == n_tiles // 2
    cpu = block_size(n_tiles, "lite_medsam_tinyvit", "cpu", "ais")
    assert 1 < cpu < n_tiles and math.ceil(n_tiles / cpu) >= 2  # several jobs already from the ratio
    by_ratio = math.ceil(n_tiles / cpu)
    more = by_ratio + 2  # min_blocks above what the ratio gives wins; below it changes nothing
    assert math.ceil(n_tiles / block_size(n_tiles, "lite_medsam_tinyvit", "cpu", "ais", min_blocks=more)) == more
    assert block_size(n_tiles, "lite_medsam_tinyvit", "cpu", "ais", min_blocks=2) == cpu


def test_min_blocks_and_max_tiles_cap_the_size_and_blocks_are_even():
    assert block_size(4, "vit_b", "cpu", "ais", min_blocks=2) == 2
    assert block_size(1, "vit_b", "cpu", "ais", min_blocks=2) == 1
    assert block_size(0, "vit_b", "cuda", "ais") == 1
    assert block_size(1000, "vit_b", "cuda", "ais", max_tiles=300) == 250  # 4 even blocks, not 300+300+300+100
    size = block_size(10, "vit_b", "cuda", "ais", min_blocks=3)
    assert size == 4 and math.ceil(10 / size) == 3


def test_amg_cost_follows_the_prompt_grid():
    costs = costs_for("vit_b", "cpu")
    assert tile_seconds(costs, "amg", 1024) == pytest.approx(16 * tile_seconds(costs, "amg", 64))
    assert tile_seconds(costs, "apg", 10) == pytest.approx(costs.ais + 10 * costs.prompt)
    assert {*METHODS} == {"embed", "ais", "amg", "apg"}


def test_a_measured_table_replaces_the_default():
    table = {("vit_b", "cuda"): Costs(encode=0.01, ais=0.01, prompt=0.001, fixed=2.0, source="gpu_check")}
    assert block_size(10_000, "vit_b", "cuda", "ais", table=table) == 5000  # 2 blocks of >= 4000


def test_unknown_architecture_device_or_method_is_an_error_naming_it():
    with pytest.raises(ValueError, match="vit_x.*'cpu'"):
        block_size(10, "vit_x", "cpu", "ais")
    with pytest.raises(ValueError, match="'mps'"):
        costs_for("vit_b", "mps")
    with pytest.raises(ValueError, match="'xyz'"):
        block_size(10, "vit_b", "cpu", "xyz")
    with pytest.raises(ValueError, match="min_blocks >= 1"):
        block_size(10, "vit_b", "cpu", "ais", min_blocks=0)
