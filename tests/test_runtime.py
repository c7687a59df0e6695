"""tilesam.runtime's process settings for model jobs."""

from __future__ import annotations

import subprocess
import sys

import pytest

FAULTS_AFTER_FREE = """
import resource, sys
import torch
from tilesam.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MB, every page touched
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = torch.ones(16 * 2**20, dtype=torch.uint8)  # the next, smaller tensor
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    sys.platform != "linux", reason="glibc's allocator settings (elsewhere keep_freed_memory is a no-op)"
)
def test_keep_freed_memory_serves_large_blocks_without_page_faults():
    """A freed 64 MB block serves the next, smaller tensor without page faults (4096 without the setting).

    (An equal-sized one need not fit: torch's aligned allocations ask for a little more than they free.)"""
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", FAULTS_AFTER_FREE, mode], capture_output=True, text=True, check=True
        )
        for mode in ("keep", "default")
    }
    kept, faults = runs["keep"].stdout.split()
    _, default_faults = runs["default"].stdout.split()
    assert kept == "True"
    assert int(faults) < 100 < 4000 < int(default_faults)
