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
