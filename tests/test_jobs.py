"""tilesam.jobs, what the CLI jobs share; its AIS parts: the decoder that comes with a model record,
its identity, the searched setting."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tilesam.config import AisParams
from tilesam.jobs import load_instance_decoder, searched_ais, state_sha256
from tilesam.models.unetr import InstanceDecoder


def test_a_decoder_states_digest_follows_its_values():
    state = InstanceDecoder().state_dict()
    same = {k: v.clone() for k, v in state.items()}
    assert state_sha256(state) == state_sha256(same) and len(state_sha256(state)) == 64
    key = next(iter(same))
    same[key] = same[key] + 1
    assert state_sha256(state) != state_sha256(same)


def test_the_decoder_comes_with_a_training_checkpoint_and_its_absence_is_an_error(lite_medsam, tmp_path):
    decoder = InstanceDecoder()
    both, plain = tmp_path / "both.pt", tmp_path / "plain.pt"
    torch.save({"model_state": lite_medsam.state_dict(), "decoder_state": decoder.state_dict()}, both)
    torch.save(lite_medsam.state_dict(), plain)
    loaded, identity = load_instance_decoder({"name": "both", "load": str(both)}, "cpu")
    assert identity == {"sha256": state_sha256(decoder.state_dict())}
    embedding = torch.randn(1, 256, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(embedding), decoder.eval()(embedding))
    with pytest.raises(ValueError, match=f"model plain \\({plain}\\) has no instance-segmentation decoder"):
        load_instance_decoder({"name": "plain", "load": str(plain)}, "cpu")


def test_the_searched_setting_is_the_tables_first_row(tmp_path):
    table = pd.DataFrame(
        {
            "center_distance_threshold": [0.4, 0.5],
            "boundary_distance_threshold": [0.6, 0.5],
            "distance_smoothing": [1.2, 1.6],
            "min_size": [100, 50],
            "mSA": [0.6, 0.5],
        }
    )
    table.to_csv(tmp_path / "ais.csv", index=False)
    params = searched_ais(AisParams(foreground_threshold=0.4, tiles_per_batch=2), tmp_path / "ais.csv")
    assert params == AisParams(0.4, 0.6, 0.4, 1.0, 1.2, 100, 2)
    assert isinstance(params.min_size, int)
    table.drop(columns="min_size").to_csv(tmp_path / "amg.csv", index=False)
    with pytest.raises(ValueError, match="amg.csv: not an AIS search table"):
        searched_ais(AisParams(), tmp_path / "amg.csv")
