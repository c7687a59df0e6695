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
for _ in range(2):
    block = torch.ones(64 * 2**20, dtype=torch.uint8)  # a fresh 64 MB block, every page touched
    del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = torch.ones(64 * 2**20, dtype=torch.uint8)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    sys.platform != "linux", reason="glibc's allocator settings (elsewhere keep_freed_memory is a no-op)"
)
def test_keep_freed_memory_serves_large_blocks_without_page_faults():
    """A freed 64 MB block is reused: the next one costs no page faults (16384 without the setting)."""
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", FAULTS_AFTER_FREE, mode], capture_output=True, text=True, check=True
        )
        for mode in ("keep", "default")
    }
    kept, faults = runs["keep"].stdout.split()
    _, default_faults = runs["default"].stdout.split()
    assert kept == "True"
    assert int(faults) < 100 < 10000 < int(default_faults)
