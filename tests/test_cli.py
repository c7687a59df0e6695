"""The command line: settings flags come from the schema, and `tilesam export` writes a TIFF and a table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from tilesam import cli, config
from tilesam.data import ome
from tilesam.jobs import JOBS
from tilesam.relay import Json, parameters, shell


def test_every_stage_setting_is_a_flag_and_the_flags_win_over_the_config_json():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["embed", "--image", "i", "--model", "m", "--spec", "s", "--block", "0", "--out", "o", "--halo", "8", "8"]
        + ["--config", json.dumps({"segmentation": {"tile_shape": [128, 128], "halo": [16, 16]}})]
    )
    params = {p.name: p for p in parameters(JOBS["embed"])}
    assert cli._settings(args, params["tiling"]) == config.Tiling(tile_shape=(128, 128), halo=(8, 8))
    assert cli._settings(args, params["params"]) == config.EmbedParams()
    args = parser.parse_args(["finetune", "--model", "m", "--images", "a", "--labels", "b", "--out", "o"])
    params = {p.name: p for p in parameters(JOBS["finetune"])}
    assert cli._settings(args, params["params"]) == config.FinetuneConfig()
    flags = {a.dest.partition(":")[2] for a in parser._subparsers._group_actions[0].choices["finetune"]._actions}
    assert {f for f in config.FinetuneConfig.__annotations__} <= flags


def test_a_setting_two_classes_share_is_prefixed_by_its_section():
    parser = cli.build_parser()
    args = parser.parse_args(["search", "--model", "m", "--spec", "s", "--method", "amg", "--images", "[]", "--out", "o"]
                             + ["--amg-pred-iou-thresh", "0.7", "--amg-search-pred-iou-thresh", "0.6", "0.8", "0.1"])  # fmt: skip
    params = {p.name: p for p in parameters(JOBS["search"])}
    assert cli._settings(args, params["amg"]).pred_iou_thresh == 0.7
    assert cli._settings(args, params["amg_grid"]).pred_iou_thresh == (0.6, 0.8, 0.1)


class _Rule:
    """A rule's attributes as Snakemake formats them into a shell command: each a sample of its job's type."""

    def __init__(self, job):
        self.params = {(p.role.field or p.name) if p.role else p.name: p for p in parameters(job)}

    def __getattr__(self, name):
        fixed = {"config": "'{}'", "device": "cpu"}
        return _Fixed(fixed[name]) if name in fixed else _Value(self.params.get(name))

    def __format__(self, spec):
        return "1"  # {threads}


class _Fixed(str):
    def __format__(self, spec):
        return str(self)


class _Value:
    def __init__(self, param):
        self.param = param

    def __format__(self, spec):
        p = self.param
        if p is None:
            return ""
        if p.role and p.role.choices:
            return str(p.role.choices[0])
        return {int: "0", float: "0.5", Json: "[]", bool: p.flag}.get(p.kind, "x")


def test_every_rules_shell_command_parses_as_its_job():
    """The rules' commands are built from the same signatures as the command line: each parses back."""
    import shlex

    for name, job in JOBS.items():
        if all(p.role and p.role.source == "cli" for p in parameters(job)):
            continue  # a person's command (export), no rule's
        rule = _Rule(job)
        fields = dict.fromkeys(("input", "output", "params", "wildcards", "resources", "threads", "log"), rule)
        words = shlex.split(shell(name, job).format(**fields))
        args = cli.build_parser().parse_args(words[1 : words.index("2>")])
        assert args.command == name


def test_a_bad_setting_is_one_clear_line(capsys):
    code = cli.main(
        ["import-image", "a.tif", "b.zarr", "--config", json.dumps({"segmentation": {"tile_shap": [1, 1]}})]
    )
    assert code == 1 and "tile_shap" in capsys.readouterr().err


def test_export_writes_the_tif_and_the_instance_table(tmp_path, capsys):
    labels = np.zeros((40, 50), np.uint32)
    labels[5:15, 5:20], labels[20:35, 30:45] = 1, 2
    arr = ome.create(tmp_path / "labels.ome.zarr", labels.shape, np.uint32, (16, 16))
    arr[:] = labels
    ome.build_pyramid(tmp_path / "labels.ome.zarr", labels=True)
    out, table = tmp_path / "out.tif", tmp_path / "out.csv"
    assert cli.main(["export", str(tmp_path / "labels.ome.zarr"), str(out), "--table", str(table)]) == 0
    assert np.array_equal(tifffile.imread(out), labels)
    assert len(pd.read_csv(table)) == 2


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0 and JOBS[command].__doc__.split()[0] in capsys.readouterr().out


def test_models_list_shows_the_decoder_column_and_recommend_follows_micro_sam(capsys):
    import io

    assert cli.main(["models", "list"]) == 0
    table = pd.read_fwf(io.StringIO(capsys.readouterr().out)).set_index(["name", "version"])
    assert table.loc[("vit_b_lm", "v3"), "decoder"] == "yes" and table.loc[("vit_b_lm", "v1"), "decoder"] == "no"
    assert table.loc[("vit_b_medical_imaging", "v3"), "decoder"] == "yes"
    for modality, model in [("lm", "vit_b_lm"), ("medical", "vit_b_medical_imaging"), ("other", "vit_b")]:
        assert cli.main(["models", "recommend", "--modality", modality]) == 0
        assert capsys.readouterr().out.strip() == model


def test_models_fetch_records_the_files_and_the_users_trust(tmp_path, monkeypatch, capsys):
    """A checkpoint with Python objects: refused without --trust-pickle, recorded with it; registry: never trusted."""
    import torch

    from tilesam.models import fetch, load_decoder_state

    monkeypatch.setenv("TILESAM_CACHEDIR", str(tmp_path / "cache"))
    state = torch.load(fetch("lite_medsam"), weights_only=True)
    mine = tmp_path / "run 1" / "best.pt"
    mine.parent.mkdir()
    torch.save({"model_state": state, "best_metric": np.float64(0.5)}, mine)
    record = tmp_path / "record.json"
    assert cli.main(["models", "fetch", str(mine), "--record", str(record)]) == 1
    err = capsys.readouterr().err
    assert str(mine) in err and "trust_pickle: true" in err and "weights_only" not in err and not record.exists()
    assert cli.main(["models", "fetch", str(mine), "--record", str(record), "--trust-pickle"]) == 0
    entry = json.loads(record.read_text())
    assert (
        entry["trust_pickle"] is True and entry["path"] == str(mine.resolve()) and entry["load"] == str(mine.resolve())
    )
    assert entry["id"] == "record" and entry["decoder"] is None
    assert entry["architecture"] == "lite_medsam_tinyvit" and entry["checksum"].startswith("sha256:")
    assert cli.main(["models", "fetch", "lite_medsam", "--record", str(record), "--trust-pickle"]) == 0
    entry = json.loads(record.read_text())
    assert entry["trust_pickle"] is False and entry["load"] == "lite_medsam@v1"  # registry files: checked by hash
    assert load_decoder_state(entry["load"]) is None
    decoder = mine.parent / "decoder.pt"
    torch.save({"decoder.out.weight": torch.ones(3, 2)}, decoder)
    assert cli.main(["models", "fetch", f"{mine}+{decoder}", "--record", str(record), "--trust-pickle"]) == 0
    entry = json.loads(record.read_text())
    assert entry["decoder"] == str(decoder.resolve()) and entry["load"] == f"{mine.resolve()}+{decoder.resolve()}"
    state = load_decoder_state(entry["load"], trust_pickle=entry["trust_pickle"])
    assert torch.equal(state["decoder.out.weight"], torch.ones(3, 2))


def test_the_command_line_ends_without_teardown_yet_says_everything_and_fails_as_python_would(tmp_path):
    """`tilesam` (no argv: the process's entry) ends with os._exit: what it printed to a pipe still arrives,
    a clear error is status 1, a usage error 2, and an uncaught exception its traceback and status 1."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    env["TILESAM_CACHEDIR"] = str(tmp_path / "cache")

    def tilesam(*args: str) -> subprocess.CompletedProcess:
        code = "import sys; from tilesam.cli import main; sys.exit(main()); print('not reached')"  # the console script
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)

    listed = tilesam("models", "list")
    assert listed.returncode == 0 and "lite_medsam" in listed.stdout and "not reached" not in listed.stdout
    assert listed.stdout.count("\n") > 10  # the whole table: flushed before the exit
    missing = tmp_path / "missing.pt"
    failed = tilesam("models", "fetch", str(missing))
    assert (
        failed.returncode == 1 and f"tilesam models: error: checkpoint file {missing} does not exist" in failed.stderr
    )
    assert tilesam("no-such-command").returncode == 2
    raised = tilesam("-v", "models", "fetch", str(missing))  # --verbose: the error as a traceback
    assert raised.returncode == 1 and raised.stderr.startswith("Traceback") and str(missing) in raised.stderr
