"""The finetuning settings (tilesam.config.FinetuneConfig) refuse what training could not use."""

from __future__ import annotations

import pytest

from tilesam.config import FinetuneConfig


def test_config_rejects_unknown_parts_and_bad_values():
    with pytest.raises(ValueError, match="train_parts"):
        FinetuneConfig(train_parts=("decoder",))
    with pytest.raises(ValueError, match="augment_variants"):
        FinetuneConfig(augment_variants=9)
    assert FinetuneConfig(train_parts=["mask_decoder"]).encoder_frozen
    assert not FinetuneConfig(train_parts=("image_encoder", "mask_decoder")).encoder_frozen
