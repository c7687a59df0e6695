"""Finetuning data: files pair by name, the validation split is by sorted name, images are read as SAM sees them."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tilesam.data import synthetic
from tilesam.embed import normalize
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


def test_a_volume_trains_section_by_section_normalised_by_the_whole_volume(tmp_path):
    spec = synthetic.SyntheticSpec("s", (4, 96, 96), 5, (8.0, 14.0), seed=9)
    synthetic.write_demo(spec, tmp_path / "s.tif", tmp_path / "s_labels.tif")
    volume, labels = tifffile.imread(tmp_path / "s.tif"), tifffile.imread(tmp_path / "s_labels.tif")
    images = ImageSet([Sample(tmp_path / "s.tif", tmp_path / "s_labels.tif")])
    assert len(images) == spec.shape[0] and images.names == [f"s:z{z}" for z in range(spec.shape[0])]
    assert len(set(images.digests)) == spec.shape[0]  # one embedding-cache key per section
    lo, hi = float(volume.min()), float(volume.max())
    for z in range(spec.shape[0]):
        assert images.rgb[z].shape == (*spec.shape[1:], 3)
        np.testing.assert_array_equal(images.rgb[z][..., 0], normalize(volume[z], (lo, hi))[..., 0])
        assert np.unique(images.labels[z]).tolist() == list(range(images.labels[z].max() + 1))  # relabelled
        assert (images.labels[z] > 0).sum() == (labels[z] > 0).sum()
    tifffile.imwrite(tmp_path / "s.tif", volume[:, :50])
    with pytest.raises(FinetuneError, match="s_labels.tif.*same shape"):
        ImageSet([Sample(tmp_path / "s.tif", tmp_path / "s_labels.tif")])
