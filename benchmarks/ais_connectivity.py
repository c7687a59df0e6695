"""Where tilesam's AIS and micro-sam's part on maps that sit at the thresholds (issue 29's ARI 0.960).

Run with micro-sam's venv (it needs bioimage-cpp, torch-em and micro-sam; tilesam from `src`):

    benchmarks/.venv-microsam/bin/python benchmarks/ais_connectivity.py

Random smooth maps around 0.5 (every threshold crossed everywhere), 512 x 512, micro-sam's default
AIS settings. Compares tilesam's `ais_labels` with micro-sam's untiled post-processing (torch-em's
watershed) and with its tiled one (`generate(tile_shape, halo)`: elf's blockwise smoothing, labelling
and watershed, one 512 x 512 block, halo 0), and tilesam's steps with 4-connected seeds.
"""

import sys
from pathlib import Path

import bioimage_cpp as bic
import numpy as np
from micro_sam.instance_segmentation import _apply_smoothing, _watershed_from_center_and_boundary_distances_parallel
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.segmentation import watershed
from sklearn.metrics import adjusted_rand_score
from torch_em.util.segmentation import watershed_from_center_and_boundary_distances

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tilesam.config import AisParams  # noqa: E402
from tilesam.segment import ais  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)

    def field(scale: float) -> np.ndarray:
        f = ndi.gaussian_filter(rng.normal(size=(512, 512)), scale)
        return (0.5 + 0.15 * f / f.std()).astype(np.float32)

    maps = np.stack([field(6), field(4), field(4)]).clip(0, 1)
    p = AisParams()
    untiled = watershed_from_center_and_boundary_distances(
        maps[1], maps[2], bic.filters.gaussian_smoothing(maps[0], p.foreground_smoothing),
        center_distance_threshold=p.center_distance_threshold, boundary_distance_threshold=p.boundary_distance_threshold,
        foreground_threshold=p.foreground_threshold, distance_smoothing=p.distance_smoothing, min_size=p.min_size,
    )  # fmt: skip
    # elf's blockwise filter writes into its input: copies (micro-sam's own state is smoothed in place)
    fg = _apply_smoothing(maps[0].copy(), p.foreground_smoothing, (512, 512), 2)
    tiled = _watershed_from_center_and_boundary_distances_parallel(
        maps[1].copy(), maps[2].copy(), fg, p.center_distance_threshold, p.boundary_distance_threshold, p.foreground_threshold,
        p.distance_smoothing, p.min_size, (512, 512), (0, 0), 2,
    )  # fmt: skip
    ours = ais.ais_labels(maps, p)
    mask = ais.foreground_mask(maps[0], p)
    c, b = (ais.smooth(m, p.distance_smoothing) for m in maps[1:])
    seeds4 = label((c < p.center_distance_threshold) & (b < p.boundary_distance_threshold) & mask, connectivity=1)
    ours4 = watershed(b, markers=seeds4, mask=mask, connectivity=1)

    def n(x):
        return len(np.unique(x[x > 0]))

    print(
        f"instances: tilesam {n(ours)}, micro-sam untiled {n(untiled)}, tiled {n(tiled)}, tilesam 4-connected seeds {n(ours4)}"
    )
    print(f"ARI tilesam vs micro-sam untiled {adjusted_rand_score(untiled.ravel(), ours.ravel()):.7f}")
    print(f"ARI tilesam vs micro-sam tiled {adjusted_rand_score(tiled.ravel(), ours.ravel()):.7f}")
    print(
        f"ARI tilesam with 4-connected seeds vs micro-sam tiled {adjusted_rand_score(tiled.ravel(), ours4.ravel()):.7f}"
    )


if __name__ == "__main__":
    main()
