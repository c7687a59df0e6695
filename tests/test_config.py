"""The config schema is the one source of defaults: every stage's data class is built from it."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, fields

import pytest

from tilesam import config

STAGES = [
    config.Tiling,
    config.EmbedParams,
    config.AmgParams,
    config.SearchGrid,
    config.AisParams,
    config.AisSearchGrid,
    config.ApgParams,
    config.ApgSearchGrid,
    config.StitchParams,
    config.FinetuneConfig,
]


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_every_field_has_the_schema_default_and_every_key_a_field(cls):
    props = config.section(*cls.__schema_path__)["properties"]
    workflow_only = set(props) - {f.name for f in fields(cls)}
    for f in fields(cls):
        default = props[f.name]["default"]
        assert f.default == (tuple(default) if isinstance(default, list) else default), f.name
        assert f.default_factory is MISSING
    # the keys without a field are the ones the workflow's plan reads (documented at the class)
    assert workflow_only <= {
        "methods",
        "amg",
        "amg_search",
        "ais",
        "ais_search",
        "apg",
        "apg_search",
        "keep_embeddings",
        "dataset",
        "val_dataset",
        "val_fraction",
    }


def test_every_section_with_settings_has_a_data_class():
    covered = {c.__schema_path__ for c in STAGES}
    sections = {
        ("segmentation",),
        ("embeddings",),
        ("segmentation", "amg"),
        ("segmentation", "amg_search"),
        ("segmentation", "ais"),
        ("segmentation", "ais_search"),
        ("segmentation", "apg"),
        ("segmentation", "apg_search"),
        ("stitch",),
        ("finetune",),
    }
    assert sections <= covered


def test_a_field_without_a_schema_key_fails_at_definition():
    with pytest.raises(TypeError, match="typo_field"):

        @dataclass
        @config.from_schema("stitch")
        class Broken:
            iou_threshold: float
            fill_background: bool
            link_overlap_threshold: float
            close_gaps: bool
            min_z_extent: int
            workers: int | None
            typo_field: int


def test_a_schema_key_without_a_field_fails_at_definition():
    with pytest.raises(TypeError, match="workers"):

        @dataclass
        @config.from_schema("stitch")
        class Broken:
            iou_threshold: float
            fill_background: bool
            link_overlap_threshold: float
            close_gaps: bool
            min_z_extent: int


def test_build_coerces_as_the_schema_types_and_skips_workflow_keys():
    ft = config.build(config.FinetuneConfig, {"lr": 1, "objects_per_image": 4.0, "val_dataset": "val"})
    assert ft.lr == 1.0 and isinstance(ft.lr, float)
    assert ft.objects_per_image == 4 and isinstance(ft.objects_per_image, int)
    tiling = config.build(config.Tiling, {"tile_shape": [64, 64], "methods": ["amg"]})
    assert tiling.tile_shape == (64, 64) and tiling.halo == (64, 64)


def test_build_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match="tile_shap"):
        config.build(config.Tiling, {"tile_shap": [64, 64]})


def test_names_come_from_the_schema():
    assert (
        config.METHODS == tuple(config.schema()["$defs"]["methods"]["items"]["enum"]) == ("amg", "ais", "apg", "auto")
    )
    assert config.PROMPT_MODES == ("point", "box", "iterative_point", "iterative_box")
    assert set(config.TRAINABLE_PARTS) == {"image_encoder", "prompt_encoder", "mask_decoder", "decoder"}


def test_finetune_config_rejects_unknown_parts_and_bad_values():
    with pytest.raises(ValueError, match="train_parts"):
        config.build(config.FinetuneConfig, {"train_parts": ["encoder"]})
    with pytest.raises(ValueError, match="augment_variants"):
        config.FinetuneConfig.from_dict({"augment_variants": 9})
    assert config.FinetuneConfig(train_parts=["mask_decoder"]).encoder_frozen
    assert not config.FinetuneConfig(train_parts=("image_encoder", "mask_decoder")).encoder_frozen


def test_a_halo_larger_than_the_tile_is_an_error_with_the_reason():
    with pytest.raises(ValueError, match=r"halo \[96, 8\] is larger than tile_shape \[64, 64\].*3 tiles wide"):
        config.build(config.Tiling, {"tile_shape": [64, 64], "halo": [96, 8]})
    assert config.build(config.Tiling, {"tile_shape": [64, 64], "halo": [64, 64]}).halo == (64, 64)


def test_ais_params_reject_out_of_range_values_naming_the_key():
    for key, bad in (("center_distance_threshold", 1.5), ("min_size", -1), ("tiles_per_batch", 0)):
        with pytest.raises(ValueError, match=f"config error in segmentation.ais.{key}"):  # the schema checks it
            config.build(config.AisParams, {key: bad})
    params = config.build(config.AisParams, {"min_size": 100.0, "distance_smoothing": 2})
    assert params.min_size == 100 and isinstance(params.min_size, int) and params.distance_smoothing == 2.0
    assert "tiles_per_batch" not in params.postprocessing() and params.postprocessing()["min_size"] == 100
    assert config.SEGMENTERS == ("amg", "ais", "apg") and config.AUTO_METHOD in config.METHODS


def test_a_key_given_twice_in_a_config_file_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "datasets:\n  a: {images: 'x/*.tif'}\n  b: {images: 'y/*.tif'}\n  a: {images: 'z/*.tif'}\nmodels: [vit_b]\n"
    )
    with pytest.raises(ValueError, match=r"config.yaml: line 4: 'a' is given twice"):
        config.check_file(path)
    path.write_text("datasets:\n  a: {images: 'x/*.tif'}\nmodels: [vit_b, vit_b_lm]\n")
    config.check_file(path)


def test_apg_params_are_micro_sams_defaults_and_reject_out_of_range_values_naming_the_key():
    params = config.ApgParams()
    assert (params.min_size, params.nms_threshold, params.multimasking, params.intersection_over_min) == (
        25,
        0.9,
        False,
        False,
    )
    assert params.center_distance_threshold == params.boundary_distance_threshold == params.foreground_threshold == 0.5
    assert params.mask_threshold is None and not params.refine_with_box_prompts
    with pytest.raises(ValueError, match="segmentation.apg.nms_threshold"):
        config.build(config.ApgParams, {"nms_threshold": 1.5})
    with pytest.raises(ValueError, match="segmentation.apg.prompts_per_batch"):
        config.build(config.ApgParams, {"prompts_per_batch": 0})
    built = config.build(config.ApgParams, {"mask_threshold": 0, "min_size": 50.0})
    assert built.mask_threshold == 0.0 and isinstance(built.min_size, int)
    assert set(built.postprocessing()) == {f.name for f in fields(built)} - {"prompts_per_batch", "tiles_per_batch"}


def test_a_yaml_tag_in_a_config_file_is_an_error_naming_the_file_line_and_tag_and_runs_nothing(tmp_path):
    """A python/ tag that would run code when read by an unsafe loader; any other tag is refused too."""
    path, marker = tmp_path / "config.yaml", tmp_path / "ran"
    for tag in (f'!!python/object/apply:os.system ["touch {marker}"]', "!!python/name:os.system", "!custom 3"):
        path.write_text(f"models: [vit_b]\noffline: {tag}\n")
        name = tag.split(" ")[0].split("[")[0]
        with pytest.raises(ValueError, match=rf"config error in {path}, line 2: the YAML tag {re.escape(name)} is not"):
            config.check_file(path)
    assert not marker.exists()


def test_a_yte_template_is_an_error_naming_the_file(tmp_path):
    """Snakemake runs a YTE template's `?` expressions as Python when it reads the file (`__use_yte__: true`)."""
    path = tmp_path / "config.yaml"
    path.write_text("__use_yte__: true\nmodels: [vit_b]\noffline: ?__import__('os').getpid() == 0\n")
    with pytest.raises(ValueError, match=rf"config error in {path}: __use_yte__ makes it a YTE template"):
        config.check_file(path)


def test_a_key_of_several_forms_says_what_each_form_wants():
    from tilesam import schema

    config = {"datasets": {"d": {"source": "synthetic"}}, "models": ["lite_medsam"]}
    with pytest.raises(ValueError, match=r"tiles_per_block: 'many' .*not of type 'integer'; 'auto' was expected"):
        schema.complete({**config, "segmentation": {"tiles_per_block": "many"}})
    with pytest.raises(ValueError, match=r"segmentation.methods: .*'xx' is not one of"):
        schema.complete({**config, "segmentation": {"methods": {"lite_medsam": ["xx"]}}})
