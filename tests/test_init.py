"""`tilesam init`: a config read off the files' headers, that validates and plans; clear errors where it cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from snakemake.utils import validate

from helpers.snakemake_cli import job_counts, snakemake
from tilesam import cli, init
from tilesam.config import SCHEMA


def _write(folder: Path, shapes: dict[str, tuple[int, ...]], labels: bool = True, **kwargs) -> None:
    """Images of these shapes (and instance labels of their spatial shape, channels dropped) under folder."""
    for name, shape in shapes.items():
        (folder / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / "images" / f"{name}.tif", np.full(shape, 100, np.uint8), **kwargs)
        if labels:
            (folder / "labels").mkdir(parents=True, exist_ok=True)
            spatial = shape[:-1] if kwargs.get("photometric") == "rgb" else shape
            gt = np.zeros(spatial, np.uint16)
            gt[..., 4:12, 4:12] = 1
            tifffile.imwrite(folder / "labels" / f"{name}.tif", gt)


def _config(text: str) -> dict:
    """The config as written, after Snakemake's own validation (as the Snakefile runs it, on a copy: it adds defaults)."""
    validate(yaml.safe_load(text), str(SCHEMA))
    return yaml.safe_load(text)


@pytest.mark.parametrize(
    ("shape", "axes", "suffix", "ndim"),
    [
        ((256, 300), None, ".tif", 2),
        ((256, 300, 3), "YXS", ".tif", 2),  # RGB
        ((256, 300, 3), None, ".zarr", 2),
        ((3, 256, 300), "SYX", ".tif", 2),  # planar RGB
        ((1, 256, 300), None, ".zarr", 2),
        ((20, 256, 300), "QYX", ".tif", 3),  # a stack of pages
        ((3, 256, 300), "ZYX", ".tif", 3),
        ((3, 256, 300), None, ".zarr", None),  # 3 channels or 3 sections: the file cannot tell
        ((5, 256, 300, 3), "ZYXS", ".tif", 3),
        ((256, 300, 4), None, ".png", 2),
    ],
)
def test_ndim_from_the_header(shape, axes, suffix, ndim):
    assert init.guess_ndim(shape, axes, suffix) == ndim


def test_a_folder_of_2d_images_with_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "cells", {"a": (300, 200), "b": (256, 256), "c": (180, 420)})
    done = init.init("cells/images/*.tif", "cells/labels/*.tif", modality="lm")
    assert done.config == Path("config/config.yaml") and done.command == "snakemake --cores 4"
    cfg = _config(Path("config/config.yaml").read_text())
    assert cfg["datasets"] == {
        "cells": {"images": "cells/images/*.tif", "labels": "cells/labels/*.tif", "modality": "lm", "ndim": 2}
    }
    assert cfg["models"] == ["vit_b_lm"]  # tilesam.models.recommend("lm")
    assert cfg["segmentation"]["methods"] == ["auto"]
    # every image fits vit_b's 1024-pixel input: one tile of the largest Y and X, rounded up to 16
    assert cfg["segmentation"]["tile_shape"] == [304, 432]
    text = done.text
    assert "3 2D images, 300 x 200 to 180 x 420 pixels, 1 channel."  # smallest to largest area in text
    assert "# labels" not in text  # the labels line is live, not the commented hint


def test_large_images_are_tiled_by_the_models_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "big", {"a": (1500, 900)}, labels=False)
    cfg = _config(init.init("big/images/*.tif", out="sam.yaml").text)
    assert cfg["models"] == ["vit_b"] and cfg["datasets"]["big"]["modality"] == "other"
    assert (cfg["segmentation"]["tile_shape"], cfg["segmentation"]["halo"]) == ([512, 512], [64, 64])
    assert "labels" not in cfg["datasets"]["big"]
    cfg = _config(init.init("big/images/*.tif", out="lite.yaml", model="lite_medsam").text)
    assert cfg["models"] == ["lite_medsam"]  # LiteMedSAM sees 256 pixels: the default run's tiles
    assert (cfg["segmentation"]["tile_shape"], cfg["segmentation"]["halo"]) == ([256, 256], [32, 32])


def test_volumes_and_rgb_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "em", {"v1": (12, 200, 200), "v2": (9, 210, 190)})
    _write(tmp_path / "he", {"x": (128, 160, 3)}, photometric="rgb")
    volumes = init.init("em/images/*.tif", "em/labels/*.tif", modality="em_organelles", out="em.yaml")
    cfg = _config(volumes.text)
    assert cfg["datasets"]["em"]["ndim"] == 3 and cfg["models"] == ["vit_b_em_organelles"]
    assert volumes.command == "snakemake --cores 4 --configfile em.yaml"
    assert "# Check: snakemake --cores 4 --configfile em.yaml -n    Run: snakemake --cores 4 --configfile em.yaml" in (
        volumes.text
    )
    assert 'images: "em/images/*.tif"  # relative to where snakemake runs' in volumes.text
    rgb = init.init("he/images/*.tif", "he/labels/*.tif", out="he.yaml")
    assert _config(rgb.text)["datasets"]["he"]["ndim"] == 2 and "3 channels" in rgb.text


def test_clear_errors_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(init.InitError, match=r"'raw/\*\.tif' matches no file \(there is no folder .*raw\)"):
        init.init("raw/*.tif")
    _write(tmp_path / "mixed", {"flat": (64, 64), "stack": (5, 64, 64)}, labels=False)
    with pytest.raises(init.InitError, match=r"disagree: .*flat\.tif is a 2D image \(64, 64\), .*stack\.tif a volume"):
        init.init("mixed/images/*.tif")
    _write(tmp_path / "pairs", {"a": (64, 64), "b": (64, 64)})
    (tmp_path / "pairs/labels/b.tif").unlink()
    with pytest.raises(init.InitError, match=r"image pairs/images/b\.tif has no labels named 'b'"):
        init.init("pairs/images/*.tif", "pairs/labels/*.tif")
    tifffile.imwrite(tmp_path / "pairs/labels/b.tif", np.zeros((64, 60), np.uint16))
    with pytest.raises(init.InitError, match=r"labels/b\.tif: labels of shape \(64, 60\) do not match image"):
        init.init("pairs/images/*.tif", "pairs/labels/*.tif")
    zarr.create_array(tmp_path / "amb.zarr", shape=(3, 64, 64), dtype="uint8")
    with pytest.raises(init.InitError, match=r"amb\.zarr: shape \(3, 64, 64\) is either .* --ndim 2 or --ndim 3"):
        init.init("amb.zarr")
    assert _config(init.init("amb.zarr", ndim=3).text)["datasets"]["mydata"]["ndim"] == 3
    with pytest.raises(init.InitError, match=r"config/config\.yaml exists; .*--out config/mydata\.yaml.*--force"):
        init.init("amb.zarr", ndim=2)
    assert "ndim: 3" in Path("config/config.yaml").read_text()  # not replaced
    assert "ndim: 2" in init.init("amb.zarr", ndim=2, force=True).config.read_text()
    with pytest.raises(init.InitError, match=r"2 image files given .*the shell expanded the glob; quote it"):
        init.init(["pairs/images/a.tif", "pairs/images/b.tif"], out="other.yaml")
    assert not Path("other.yaml").exists()


def test_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "data", {"a": (64, 64)})
    assert cli.main(["init", "data/images/*.tif", "--labels", "data/labels/*.tif", "--modality", "lm"]) == 0
    assert "wrote config/config.yaml; check it, then run:\n  snakemake --cores 4" in capsys.readouterr().out
    assert cli.main(["init", "data/images/a.tif", "data/images/b.tif"]) == 1
    assert "tilesam init: error: 2 image files given" in capsys.readouterr().err


def test_the_written_config_dry_runs(tmp_path):
    """The workflow plans the written config as it is: an embed and a segment job per image (one tile each)."""
    _write(tmp_path / "data", {"a": (200, 240), "b": (180, 200)})
    init.init(
        str(tmp_path / "data/images/*.tif"), str(tmp_path / "data/labels/*.tif"), out=tmp_path / "config/config.yaml"
    )
    jobs = job_counts(snakemake(tmp_path, "-n").stdout)
    assert jobs["embed"] == jobs["segment"] == jobs["evaluate"] - 2 == 2  # + the classical baseline's two


@pytest.mark.shared
def test_dsb2018(shared_dir, tmp_path):
    """The README's own-data example: the real DSB2018 folder (2D, gray and RGB, 256 x 256 to 520 x 696)."""
    data = shared_dir / "data/dsb2018"
    done = init.init(
        str(data / "images/*.tif"), str(data / "labels/*.tif"), modality="lm", out=tmp_path / "config/config.yaml"
    )
    cfg = _config(done.text)
    assert cfg["datasets"]["dsb2018"]["ndim"] == 2 and cfg["models"] == ["vit_b_lm"]
    assert "45 2D images, 256 x 256 to 520 x 696 pixels, 1 or 3 channels." in done.text
    assert cfg["segmentation"]["tile_shape"] == [528, 704]  # 524 x 696 rounded up: every image one tile
    assert f'images: "{data}/images/*.tif"\n' in done.text  # absolute: no note on where it is relative to
    jobs = job_counts(snakemake(tmp_path, "-n").stdout)
    assert jobs["embed"] == jobs["segment"] == 45
