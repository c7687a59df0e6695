"""Finetuning data: files pair by name, the validation split is by sorted name, images are read as SAM sees them."""

from __future__ import annotations

import numpy as np
import pytest

from tilesam.finetune.data import FinetuneError, ImageSet, Sample, pair_files, split_samples, train_val_samples


def test_files_pair_by_name_and_split_by_sorted_name(tmp_path):
    for folder in ("im", "lab"):
        (tmp_path / folder).mkdir()
        for name in ("c", "a", "b", "d"):
            (tmp_path / folder / f"{name}.tif").write_bytes(b"")
    samples = pair_files(str(tmp_path / "im" / "*.tif"), str(tmp_path / "lab" / "*.tif"))
    assert [s.name for s in samples] == ["a", "b", "c", "d"]
    assert all(s.labels.parent.name == "lab" and s.labels.stem == s.name for s in samples)
    train, val = split_samples(samples[::-1], 0.25)
    assert [s.name for s in train] == ["a", "b", "c"] and [s.name for s in val] == ["d"]
    (tmp_path / "im" / "e.tif").write_bytes(b"")
    with pytest.raises(FinetuneError, match="e.tif"):
        pair_files(str(tmp_path / "im" / "*.tif"), str(tmp_path / "lab" / "*.tif"))
    with pytest.raises(FinetuneError, match="matches no file"):
        pair_files(str(tmp_path / "none" / "*.tif"), str(tmp_path / "lab" / "*.tif"))


def test_validation_files_are_given_in_pairs_or_split_off(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.tif").write_bytes(b"")
    files = [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    train, val = train_val_samples(files, files, None, None, 0.5)
    assert [s.name for s in train] == ["a"] and [s.name for s in val] == ["b"]
    train, val = train_val_samples(files, files, files[:1], files[:1], 0.5)  # given files win over the fraction
    assert [s.name for s in train] == ["a", "b"] and [s.name for s in val] == ["a"]
    with pytest.raises(FinetuneError, match="both"):
        train_val_samples(files, files, files, None, 0.0)


def test_images_read_as_normalised_rgb_and_labels_as_connected_components(colour_image):
    images = ImageSet([Sample(*colour_image)])
    assert images.rgb[0].shape == (300, 520, 3) and images.rgb[0].dtype == np.uint8
    assert images.rgb[0][..., 1].max() == 255  # min/max normalised
    assert np.unique(images.labels[0]).tolist() == [0, 1]  # relabelled as connected components
