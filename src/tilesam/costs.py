"""What a job costs, per architecture and device, and the block size that makes its tiles worth starting it for.

A job pays a fixed cost before its first tile (process start, imports, model load, store checks;
`benchmarks/job_overhead.py` measures it) and then seconds per tile (`benchmarks/gpu_check.py`
measures them on whatever device it finds). :func:`block_size` picks tiles per block so that a
job's tile work is at least ``ratio`` (20) times its fixed cost, while ``min_blocks`` keeps local
cores busy. No torch here: the plan calls this for every DAG build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["COSTS", "Costs", "METHODS", "block_size", "costs_for", "tile_seconds", "tiles_per_job"]

#: what a block's jobs do per tile: embed (the image encoder), segment by AIS (instance decoder),
#: AMG (prompt grid through the mask decoder) or APG (AIS seeds as prompts: both)
METHODS: tuple[str, ...] = ("embed", "ais", "amg", "apg")


@dataclass(frozen=True)
class Costs:
    """Seconds of one architecture on one device (CPU: CPU-seconds with one thread, as the rules run them).

    ``encode``: the image encoder per tile; ``ais``: the instance decoder's maps and their
    post-processing per tile; ``prompt``: the mask decoder per prompt (AMG's grid, APG's seeds);
    ``fixed``: a model job's cost besides its tiles. ``source`` says where the numbers come from.
    """

    encode: float
    ais: float
    prompt: float
    fixed: float
    source: str


_CPU = "CPU-s, one thread, the 2-core development machines: docs/benchmarks.md; fixed: job_overhead.py"
_GPU = "estimated from FLOPs (vit_b 0.93 TFLOP a tile, ~40% of an H100's bf16 peak); gpu_check.py measures them"

#: (architecture, device) -> costs. The decoders do not depend on the encoder: AIS scales with the
#: input side (1024: 16x upscaling; LiteMedSAM's 256: 4x), a prompt costs the same for every model.
#: CPU, measured with job_overhead.py (one 512-pixel tile, one thread): LiteMedSAM encode 2.1-2.9, AIS 1.2
#: (4949fd8, EPYC-2); vit_b from the tiled AIS run of vs_microsam.py at 27163ed (XEON-2, 16-tile jobs,
#: job wall over tiles): encode 7.0, AIS 5.7 (the decoder at 1024, the same for every 1024-pixel model).
#: vit_t, vit_l and vit_h encoders are scaled from encoder_speed figures (vit_l, vit_h by vit_b's:
#: estimated). `fixed`: job_overhead.py, 1.6-2.4 CPU-s a
#: model job with LiteMedSAM or vit_b (f63fe03, 8f3b1ae); vit_l and vit_h add their encoder's hash in the
#: embed job (0.4 CPU-s for vit_b's 375 MB, so ~1 and ~2.5 for theirs: estimated, not measured).
COSTS: dict[tuple[str, str], Costs] = {
    ("lite_medsam_tinyvit", "cpu"): Costs(encode=2.5, ais=1.2, prompt=0.1, fixed=2.4, source=_CPU),
    ("vit_t", "cpu"): Costs(encode=4.0, ais=5.7, prompt=0.1, fixed=2.4, source=_CPU),
    ("vit_b", "cpu"): Costs(encode=7.0, ais=5.7, prompt=0.1, fixed=2.4, source=_CPU),
    ("vit_l", "cpu"): Costs(encode=21.0, ais=5.7, prompt=0.1, fixed=3.0, source=_CPU),
    ("vit_h", "cpu"): Costs(encode=37.0, ais=5.7, prompt=0.1, fixed=4.0, source=_CPU),
    ("lite_medsam_tinyvit", "cuda"): Costs(encode=0.0005, ais=0.001, prompt=0.0002, fixed=5.0, source=_GPU),
    ("vit_t", "cuda"): Costs(encode=0.001, ais=0.01, prompt=0.0002, fixed=5.0, source=_GPU),
    ("vit_b", "cuda"): Costs(encode=0.004, ais=0.01, prompt=0.0002, fixed=5.0, source=_GPU),
    ("vit_l", "cuda"): Costs(encode=0.011, ais=0.01, prompt=0.0002, fixed=6.0, source=_GPU),
    ("vit_h", "cuda"): Costs(encode=0.018, ais=0.01, prompt=0.0002, fixed=8.0, source=_GPU),
}


def costs_for(architecture: str, device: str) -> Costs:
    """The table's costs of an architecture on a device (``cuda:1`` is ``cuda``; ``auto`` is not a device)."""
    kind = device.partition(":")[0]
    try:
        return COSTS[(architecture, kind)]
    except KeyError:
        known = sorted({a for a, _ in COSTS}), sorted({d for _, d in COSTS})
        raise ValueError(
            f"no job costs for architecture {architecture!r} on device {device!r} "
            f"(architectures {', '.join(known[0])}; devices {', '.join(known[1])})"
        ) from None


def tile_seconds(costs: Costs, method: str, prompts_per_tile: int = 64) -> float:
    """Seconds of one tile's work in a job of ``method`` (``prompts_per_tile``: AMG's grid, APG's seeds)."""
    if method == "embed":
        return costs.encode
    if method == "ais":
        return costs.ais
    if method == "amg":
        return costs.prompt * prompts_per_tile
    if method == "apg":
        return costs.ais + costs.prompt * prompts_per_tile
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def tiles_per_job(
    architecture: str,
    device: str,
    method: str,
    *,
    prompts_per_tile: int = 64,
    ratio: float = 20.0,
    table: dict[tuple[str, str], Costs] | None = None,
) -> int:
    """The fewest tiles that make a block's jobs worth starting: the tile work of its embed job and of
    its ``method`` job at least ``ratio`` x the job's fixed cost."""
    costs = (table or COSTS).get((architecture, device.partition(":")[0])) or costs_for(architecture, device)
    per_tile = min(costs.encode, tile_seconds(costs, method, prompts_per_tile))
    return math.ceil(ratio * costs.fixed / max(per_tile, 1e-9))


def block_size(
    n_tiles: int,
    architecture: str,
    device: str,
    method: str,
    min_blocks: int = 1,
    *,
    prompts_per_tile: int = 64,
    max_tiles: int | None = None,
    ratio: float = 20.0,
    table: dict[tuple[str, str], Costs] | None = None,
) -> int:
    """Tiles per block of an image of ``n_tiles`` tiles, for ``tiles_per_block: auto``.

    A block is one embed job and one segment job (``method``), so the cheaper of the two per tile
    sets the size: at least ``ratio`` x the fixed cost of tile work in each job. ``min_blocks``
    then caps it so the image still gets that many jobs (local cores busy), ``max_tiles`` caps a
    job's memory and time; the caps win over the ratio. The blocks come out equal to within one
    tile (never below the ratio's size to get there). ``n_tiles`` of 0 gives 1.
    """
    if n_tiles < 0 or min_blocks < 1 or ratio <= 0 or (max_tiles is not None and max_tiles < 1):
        raise ValueError(
            f"block_size needs n_tiles >= 0, min_blocks >= 1, ratio > 0, max_tiles >= 1 "
            f"(got {n_tiles}, {min_blocks}, {ratio}, {max_tiles})"
        )
    if n_tiles == 0:
        return 1
    need = tiles_per_job(architecture, device, method, prompts_per_tile=prompts_per_tile, ratio=ratio, table=table)
    cap = min(math.ceil(n_tiles / min_blocks), max_tiles or n_tiles)  # the most the caps allow
    blocks = math.ceil(n_tiles / cap) if need >= cap else max(n_tiles // need, math.ceil(n_tiles / cap))
    return math.ceil(n_tiles / blocks)  # the same tiles in as many blocks, evened out
