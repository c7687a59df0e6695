"""`tilesam init`: a commented config for a folder of images, read from the files' headers.

From a glob of images (and optionally of their ground truth) to a `config/config.yaml` that the
workflow runs as it is: the dataset's ndim and channels come from the files (no pixels read), the
model is the one recommended for the modality (`tilesam.models.recommend`), the method `auto`, and
the tile size follows the images' size and the model's input size. The dataset entry is checked
with the workflow's own planning code (`tilesam.data.datasets.images_of`), so a config that init
writes plans, and a problem it cannot solve (no file, images of different kinds, labels that do
not pair up) is an error naming the files, before anything is written.
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path

from tilesam import config
from tilesam.data import datasets, headers, io

#: tile and halo for images larger than the model's input (input size -> (tile, halo)): micro-sam's
#: tiled default for SAM's 1024-pixel input; LiteMedSAM sees 256 pixels (the default run's tiles)
TILING = {1024: (512, 64), 256: (256, 32)}
GENERIC_FOLDERS = {"images", "image", "imgs", "raw", "data", "input", "inputs", "tif", "tiff"}
MODALITIES: tuple[str, ...] = config.enum("datasets", "*", "modality")
SPLIT_HINT_FILES = 10  # fewer images make a validation part of one or none


class InitError(ValueError):
    """Data that `tilesam init` cannot write a config for; the message names the files and the fault."""


@dataclass(frozen=True)
class FileLayout:
    """What one file's header says: its spatial shape, and channels (1 gray, 3 RGB)."""

    path: str
    ndim: int
    shape: tuple[int, ...]
    channels: int


@dataclass(frozen=True)
class DataSummary:
    """The images of one dataset as init found them."""

    images: str  # the glob, as given
    labels: str | None
    files: tuple[FileLayout, ...]

    @property
    def ndim(self) -> int:
        return self.files[0].ndim

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(sorted({f.channels for f in self.files}))

    def largest_yx(self) -> tuple[int, int]:
        return (max(f.shape[-2] for f in self.files), max(f.shape[-1] for f in self.files))


def one_glob(values: str | list[str] | None, what: str) -> str | None:
    """The glob of a command-line argument; several values mean the shell expanded an unquoted glob."""
    if values is None or isinstance(values, str):
        return values
    if len(values) != 1:
        raise InitError(
            f"{len(values)} {what} files given ({values[0]}, {values[1]}, ...): the shell expanded the glob; "
            f"quote it ('{Path(values[0]).parent}/*{Path(values[0]).suffix}') so that the config keeps the pattern"
        )
    return values[0]


def matching(pattern: str, what: str) -> list[str]:
    """The files of a glob, sorted; none is an error that says where it looked."""
    files = sorted(glob.glob(pattern))
    if not files:
        folder = Path(pattern).absolute().parent
        while any(c in str(folder) for c in "*?["):
            folder = folder.parent
        where = f"looked in {folder}" if folder.is_dir() else f"there is no folder {folder}"
        raise InitError(
            f"the {what} glob {pattern!r} matches no file ({where}); quote it so the shell does not expand it"
        )
    return files


def guess_ndim(shape: tuple[int, ...], axes: str | None, suffix: str) -> int | None:
    """2 or 3 from a file's array shape (and TIFF axes, where known); None where the header cannot tell.

    (Y, X) is 2D; (Y, X, 3|4) and PNG/JPEG are 2D RGB; 4 dimensions are an RGB volume; (Z, Y, X) is a
    volume unless its first axis is 1, or 3/4 with the TIFF calling it channels (`C`/`S`).
    """
    if suffix in (".png", ".jpg", ".jpeg") or len(shape) == 2:
        return 2
    if len(shape) == 4:
        return 3
    if len(shape) != 3:
        return None
    axes = axes or ""
    if shape[-1] in (3, 4) and (not axes or axes.endswith("S") or axes.endswith("C")):
        return 2
    if shape[0] == 1 or (shape[0] in (3, 4) and axes[:1] in ("C", "S")):
        return 2
    if shape[0] in (3, 4) and axes[:1] not in ("Z", "Q", "I", "T"):
        return None  # 3 channels or 3 sections: say which with --ndim
    return 3


def _axes(path: Path) -> str | None:
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes
    except Exception:  # the header check (headers.check_file) says what is wrong with it
        return None


def layout(path: str, ndim: int | None = None) -> FileLayout:
    """One file's layout from its header; `ndim` forces 2D or 3D where the header is ambiguous."""
    p = Path(path)
    try:
        headers.check_file(p)
        arr = io.open_lazy(p)
        guessed = ndim or guess_ndim(tuple(arr.shape), _axes(p), p.suffix.lower())
        if guessed is None:
            raise InitError(
                f"{path}: shape {tuple(arr.shape)} is either a 2D image with {arr.shape[0]} channels or a "
                f"volume of {arr.shape[0]} sections; say which with --ndim 2 or --ndim 3"
            )
        canonical, channels = io.to_canonical(arr, guessed, p)
    except io.InputError as err:
        raise InitError(str(err)) from err
    return FileLayout(path, guessed, tuple(canonical.shape[1:] if channels > 1 else canonical.shape), channels)


def inspect(images: str, labels: str | None = None, ndim: int | None = None) -> DataSummary:
    """Every image's layout; images of different dimensionality are an error naming one of each."""
    files = tuple(layout(f, ndim) for f in matching(images, "images"))
    kinds = {f.ndim: f for f in files}
    if len(kinds) > 1:
        a, b = kinds[2], kinds[3]
        raise InitError(
            f"the images of {images!r} disagree: {a.path} is a 2D image {a.shape}, {b.path} a volume {b.shape}; "
            "a dataset holds one kind: give each kind its own glob (or force one with --ndim)"
        )
    if labels is not None:
        matching(labels, "labels")
    return DataSummary(images, labels, files)


def tiling(summary: DataSummary, image_size: int) -> tuple[list[int], list[int], str]:
    """tile_shape, halo and why: one tile per image where every image fits the model's input, else TILING's."""
    tile, halo = TILING.get(image_size, TILING[1024])
    y, x = summary.largest_yx()
    if max(y, x) <= image_size:  # untiled, as micro-sam segments a small image
        why = f"one tile per image: every image (up to {y} x {x}) fits the model's {image_size}-pixel input"
        return [16 * math.ceil(y / 16), 16 * math.ceil(x / 16)], [halo, halo], why
    why = f"images up to {y} x {x} are larger than the model's {image_size}-pixel input: tiled and stitched"
    return [tile, tile], [halo, halo], why


def dataset_name(images: str) -> str:
    """A dataset name from the images' folder (its parent's where the folder is just `images`)."""
    parts = [p for p in Path(images).parent.parts if not any(c in p for c in "*?[") and p not in ("..", ".", "/")]
    while parts and parts[-1].lower() in GENERIC_FOLDERS:
        parts.pop()
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", parts[-1]).strip("_") if parts else ""
    return name or "mydata"


def _q(value: str) -> str:
    """A YAML double-quoted string (JSON's escaping is YAML's)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _extent(summary: DataSummary) -> str:
    shapes = sorted({f.shape for f in summary.files}, key=lambda s: math.prod(s))
    size = " x ".join(map(str, shapes[0])) + ("" if len(shapes) == 1 else " to " + " x ".join(map(str, shapes[-1])))
    channels = " or ".join(map(str, summary.channels))
    n = len(summary.files)
    kind = (
        ("2D image" if summary.ndim == 2 else "volume (Z, Y, X)")
        if n == 1
        else ("2D images" if summary.ndim == 2 else "volumes (Z, Y, X)")
    )
    return f"{n} {kind}, {size} pixels, {channels} channel{'s' if summary.channels != (1,) else ''}"


def render(summary: DataSummary, *, name: str, modality: str, model: str, image_size: int, command: str) -> str:
    """The config, commented: what was found, what was chosen and why, what to change."""
    tile, halo, tile_note = tiling(summary, image_size)
    recommended = _recommend(modality)
    why = "recommended for" if model == recommended else f"chosen (recommended: {recommended}) for"
    lines = [
        f"# tilesam config written by `tilesam init` for {summary.images}",
        f"# {_extent(summary)}.",
        "# Every key and its default: docs/configuration.md.",
        f"# Check: {command} -n    Run: {command}",
        "datasets:",
        f"  {name}:",
        f"    images: {_q(summary.images)}"
        + ("" if Path(summary.images).is_absolute() else "  # relative to where snakemake runs"),
    ]
    if summary.labels:
        lines.append(
            f"    labels: {_q(summary.labels)}  # ground truth, paired by file name: the run scores against it"
        )
    else:
        lines.append(
            '    # labels: "path/to/labels/*.tif"  # ground truth (same file names): adds scores, tables, figures'
        )
    lines += [
        f"    modality: {modality}",
        f"    ndim: {summary.ndim}  # {'3: each file is a volume' if summary.ndim == 3 else '2: each file is one image'}",
        f"models: [{model}]  # {why} {modality} (`tilesam models list` shows all; lite_medsam works offline)",
        "segmentation:",
        "  methods: [auto]  # ais (micro-sam's instance decoder; with a search, the better of ais and apg) where"
        " the model has one, else amg (prompt grid)",
        f"  tile_shape: {tile}  # {tile_note}",
        f"  halo: {halo}  # should exceed half the largest object",
        "device: auto  # a GPU where there is one",
    ]
    if summary.labels and len(summary.files) >= SPLIT_HINT_FILES:
        lines += [
            "# To tune the segmentation on a validation part and score the rest, use two entries of the same files:",
            f"#   {name}_val: {{images: {_q(summary.images)}, labels: {_q(summary.labels)}, split: val}}",
            f"#   {name}: {{..., split: test}}, and segmentation: {{ais_search: {{dataset: {name}_val}}}}",
            "#   (amg_search for a model without an instance decoder; see docs/configuration.md)",
        ]
    return "\n".join(lines) + "\n"


def _recommend(modality: str) -> str:
    from tilesam.models import recommend

    return recommend(modality)


def _image_size(model: str) -> int:
    from tilesam.models import registry

    try:
        return registry.lookup(model).image_size
    except (KeyError, ValueError):  # a checkpoint path: SAM's input unless it says otherwise
        return 1024


@dataclass(frozen=True)
class InitResult:
    config: Path
    text: str
    command: str


def init(
    images: str | list[str],
    labels: str | list[str] | None = None,
    *,
    modality: str = "other",
    out: str | Path = "config/config.yaml",
    model: str | None = None,
    ndim: int | None = None,
    name: str | None = None,
    force: bool = False,
) -> InitResult:
    """Inspect the files, write the config (never over an existing one unless `force`), say how to run it.

    `images` and `labels` are globs (a list: the command line's values, which must be one glob each).
    """
    if modality not in MODALITIES:
        raise InitError(f"unknown modality {modality!r}; one of {', '.join(MODALITIES)}")
    out = Path(out)
    images, labels = one_glob(images, "image"), one_glob(labels, "label")
    summary = inspect(images, labels, ndim)
    if out.exists() and not force:
        raise InitError(
            f"{out} exists; write another file (--out config/{dataset_name(images)}.yaml, then run snakemake "
            "with --configfile and that file) or pass --force to replace it"
        )
    name = name or dataset_name(images)
    model = model or _recommend(modality)
    default = Path("config/config.yaml")
    command = "snakemake --cores 4" + ("" if out.resolve() == default.resolve() else f" --configfile {out}")
    text = render(summary, name=name, modality=modality, model=model, image_size=_image_size(model), command=command)
    check(text, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return InitResult(out, text, command)


def check(text: str, where: str | Path) -> None:
    """The config validates against the schema and its dataset plans (pairs, shapes, complete files)."""
    import jsonschema
    import yaml

    cfg = yaml.safe_load(text)
    try:
        jsonschema.Draft202012Validator(config.schema()).validate(cfg)
    except jsonschema.ValidationError as err:  # a bug of init's, not of the data
        raise InitError(f"{where}: the written config does not validate: {err.message}") from err
    for dataset, entry in cfg["datasets"].items():
        try:
            datasets.images_of(dataset, entry)
        except (datasets.DatasetError, io.InputError) as err:
            raise InitError(str(err)) from err
