"""Every file the workflow writes, as one pattern each: the rules name their outputs with these,
the plan formats them to ask for outputs, so a path is spelled once.

Patterns use Snakemake's wildcard syntax (`{dataset}`), which is also `str.format`'s: a rule file
writes `output: paths.IMAGE`, the plan `paths.IMAGE.format(dataset=d, image=i)`. Why here and not
in the rules: the plan is plain Python, unit-tested without Snakemake, and needs the same names.
"""

from __future__ import annotations

MODEL_RECORD = "resources/models/{model}.json"  # what a model job loads (`tilesam models fetch --record`)

SYNTHETIC_DIR = "results/synthetic"  # the demo images: <dir>/<dataset>/{images,labels}/<image>.tif
SYNTHETIC_IMAGE = SYNTHETIC_DIR + "/{dataset}/images/{image}.tif"
SYNTHETIC_LABELS = SYNTHETIC_DIR + "/{dataset}/labels/{image}.tif"

IMAGE = "results/images/{dataset}/{image}.ome.zarr"  # imported, chunked to the tile grid
LABELS = "results/labels/{dataset}/{image}.ome.zarr"  # imported ground truth
EMBEDDINGS = "results/embeddings/{dataset}/{image}/{model}/block{block}.zarr"
SEGMENTS = "results/segmentation/{dataset}/{image}/{model}/{method}/block{block}.zarr"  # per-tile labels
STITCHED = "results/segmentation/{dataset}/{image}/{model}/{method}/labels.ome.zarr"
FOREGROUND = "results/segmentation/{dataset}/{image}/classical/foreground.json"  # the baseline's threshold
EVALUATION = "results/evaluation/{dataset}/{image}/{model}/{method}.json"  # a method or a prompt mode

FINETUNED = "results/finetuned/{dataset}/{base}.pth"  # a finetuned checkpoint; its card beside it
FINETUNED_CARD = "results/finetuned/{dataset}/{base}.json"

BENCHMARK = "results/benchmark"  # the tables and figures of a run
SEARCH = BENCHMARK + "/{method}_search/{model}.csv"  # a method's parameter search, best first
CLASSICAL_SEARCH = BENCHMARK + "/classical_search.csv"
TABLE = BENCHMARK + "/table.csv"
TABLE_MD = BENCHMARK + "/table.md"
QUALITATIVE = BENCHMARK + "/qualitative_{dataset}.png"
