"""The user's own commands beside the jobs: `tilesam models`, `tilesam datasets`, `tilesam init`.

Built into the command line like the jobs (`tilesam.relay`): the signature is the interface. No rule
runs them (every parameter is `Cli`), except `models fetch --record`, which the fetch rule calls.
"""

from __future__ import annotations

from typing import Annotated

from tilesam import config as schema
from tilesam.data.public_datasets import ROOT
from tilesam.models.registry import RECOMMEND_MODALITIES
from tilesam.relay import Cli

MODEL_ACTIONS = ("list", "fetch", "recommend", "record")


def models(
    action: Annotated[
        str,
        Cli(
            "list: every known model (which have an AIS decoder); fetch: download, checksum-verified, with its "
            "decoder file, into the cache; recommend: the model for a modality (micro-sam's rule of thumb); "
            "record: the workflow's record of a finetuned model, from its card",
            choices=MODEL_ACTIONS,
        ),
    ],
    names: Annotated[
        list[str], Cli("fetch: registry names, name@version, checkpoint or checkpoint+decoder paths")
    ] = (),
    /,
    *,
    offline: Annotated[bool, Cli("fetch: never touch the network")] = False,
    record: Annotated[str | None, Cli("fetch: write a JSON record of the fetched model here (the workflow's)")] = None,
    sha256: Annotated[
        str | None, Cli("fetch: [ALG:]HASH where the registry knows none (md5:<hex> from zenodo)")
    ] = None,
    trust_pickle: Annotated[
        bool,
        Cli(
            "fetch, record: your own checkpoint files may be fully unpickled, which runs code from them (config: "
            "trust_pickle); registry files are always checked by their hash instead"
        ),
    ] = False,
    card: Annotated[str | None, Cli("record: model card JSON written by `tilesam finetune`")] = None,
    out: Annotated[str | None, Cli("record: the record to write")] = None,
    modality: Annotated[str | None, Cli("recommend: the data's modality", choices=RECOMMEND_MODALITIES)] = None,
) -> None:
    """List, fetch or recommend models (`list` shows which have an AIS decoder)."""
    from tilesam import models as zoo
    from tilesam.runtime import fetch_model, record_finetuned

    needs = {"fetch": ("names", names), "recommend": ("--modality", modality), "record": ("--card/--out", card and out)}
    if action in needs and not needs[action][1]:
        raise ValueError(f"models {action} needs {needs[action][0]}")
    if action == "list":
        print(zoo.models_table().to_string(index=False))
    elif action == "recommend":
        print(zoo.recommend(modality))
    elif action == "record":
        record_finetuned(card, out, trust_pickle=trust_pickle)
    else:
        if record and len(names) != 1:
            raise ValueError(f"--record takes one model, got {len(names)}: {' '.join(names)}")
        for name in names:
            files = fetch_model(name, record=record, offline=offline, sha256=sha256, trust_pickle=trust_pickle)
            print(f"{name}: {files.weights}" + (f" (decoder {files.decoder})" if files.decoder else ""))


def datasets(
    action: Annotated[
        str,
        Cli("list: name, modality, ndim, url and sha256 of every file; fetch: download and convert", ("list", "fetch")),
    ],
    name: Annotated[str | None, Cli("fetch: the dataset")] = None,
    /,
    *,
    root: Annotated[str, Cli("fetch: converted to <root>/<name>/{images,labels}")] = ROOT,
    sha256: Annotated[
        list[str], Cli("fetch: checksum where none is published, HASH or FILE=HASH (repeat for each file)")
    ] = (),
    offline: Annotated[bool, Cli("fetch: never touch the network")] = False,
) -> None:
    """List or fetch public benchmark datasets (checksum-verified)."""
    import pandas as pd

    from tilesam.data import public_datasets

    if action == "list":
        print(pd.DataFrame(public_datasets.datasets_table()).to_string(index=False))
        return
    if not name:
        raise ValueError("datasets fetch needs the dataset's name (`tilesam datasets list` shows them)")
    checksums: dict[str, str] | str | None = None
    if sha256:  # HASH (one-file datasets) or FILE=HASH, repeatable
        pairs = [h.split("=", 1) if "=" in h else [None, h] for h in sha256]
        checksums = pairs[0][1] if len(pairs) == 1 and pairs[0][0] is None else dict(pairs)
    print(f"{name}: {public_datasets.fetch_dataset(name, root, offline=offline or None, sha256=checksums)}")


def init(
    images: Annotated[list[str], Cli("glob of the images, quoted: 'data/raw/*.tif'")],
    /,
    *,
    labels: Annotated[list[str] | None, Cli("glob of their ground truth (same file names), quoted")] = None,
    modality: Annotated[
        str, Cli("picks the recommended model (`tilesam models recommend`)", schema.enum("datasets", "*", "modality"))
    ] = "other",
    model: Annotated[str | None, Cli("a model instead of the recommended one (lite_medsam: offline)")] = None,
    ndim: Annotated[int | None, Cli("2D images or volumes, where the files cannot tell", (2, 3))] = None,
    name: Annotated[str | None, Cli("the dataset's name (default: its folder's)")] = None,
    out: Annotated[str, Cli("the config to write")] = "config/config.yaml",
    force: Annotated[bool, Cli("replace an existing --out")] = False,
) -> None:
    """Write a commented config for your images (ndim, channels, model, tiles from the files)."""
    from tilesam.init import init as write_config

    done = write_config(images, labels, modality=modality, out=out, model=model, ndim=ndim, name=name, force=force)
    print(f"wrote {done.config}; check it, then run:\n  {done.command}")


#: the user's commands, before the jobs in `tilesam --help`
COMMANDS = {"models": models, "datasets": datasets, "init": init}
