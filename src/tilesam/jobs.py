"""One function per workflow job: files in, files out, the logic left to the modules they call.

`tilesam <command>` (cli.py) parses arguments and calls these; the rules call the command.
A job that runs a model loads it once (`load_record`) and keeps it for all its tiles.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesam.config import (
    AisParams,
    AisSearchGrid,
    AmgParams,
    EmbedParams,
    FinetuneConfig,
    SearchGrid,
    StitchParams,
    Tiling,
    replace,
)
from tilesam.device import resolve_device

if TYPE_CHECKING:  # the classical baseline's and the prompts' settings
    from tilesam.config import ClassicalGrid, ClassicalParams, PromptParams

log = logging.getLogger("tilesam")


# --- shared by the model jobs -----------------------------------------------------------------
def load_record(record_path: str | Path, device: str = "auto"):
    """The model of a workflow model record (from `fetch_model` or `record_finetuned`), and the record.

    The record says whether the user trusts their own checkpoint file with full unpickling
    (config `trust_pickle`, `tilesam models fetch --trust-pickle`); registry files never need it.
    """
    from tilesam.models import load_model

    record = json.loads(Path(record_path).read_text())
    sam = load_model(record["load"], device=resolve_device(device), trust_pickle=bool(record.get("trust_pickle")))
    return sam, record


def load_instance_decoder(record: dict, device, upscale: int = 16):
    """The instance-segmentation decoder of a workflow model record, and its identity for provenance.

    The state comes with the model (its checkpoint's `decoder_state` or its card's decoder file);
    a model without one is an error naming it. ``upscale``: the SAM model's (`decoder_upscale`).
    """
    from tilesam.models import load_decoder_state
    from tilesam.models.unetr import load_decoder

    state = load_decoder_state(record["load"], trust_pickle=bool(record.get("trust_pickle")))
    if state is None:
        raise ValueError(
            f"model {record['name']} ({record['load']}) has no instance-segmentation decoder, which method ais "
            "needs: use amg, or auto (ais only where a model has a decoder)"
        )
    decoder = load_decoder(state, source=str(record["load"]), device=device, upscale=upscale)
    return decoder.eval(), {"sha256": state_sha256(state)}  # content, not path: a moved run still resumes


def state_sha256(state: dict) -> str:
    """A digest of a state dict's names, shapes, dtypes and values (the decoder's identity)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _provenance(record: dict, model, image: str | Path, tiling: Tiling, block: int, dtype: str):
    """The tile grid of an imported image and the provenance its block stores carry."""
    from tilesam.data import io
    from tilesam.embed import Provenance
    from tilesam.tiling import TileGrid

    info = io.read_info(image)
    grid = TileGrid(info.shape, tiling.tile_shape, tiling.halo)
    encoder = {**model.image_encoder.state_dict(), "pixel_mean": model.pixel_mean, "pixel_std": model.pixel_std}
    prov = Provenance(
        encoder_sha256=state_sha256(encoder),
        img_size=int(model.image_encoder.img_size),
        grid=grid.to_dict(),
        block=block,
        tiles_per_block=tiling.block_size(grid.n_tiles),
        image_signature=info.signature,
        dtype=dtype,
    )
    return grid, prov


def _write_json(out: str | Path, obj: Any) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(obj, indent=1))


# --- models -----------------------------------------------------------------------------------
def _model_record(
    name: str,
    load: str,
    path: str | Path,
    sha256: str | None,
    architecture: str,
    *,
    checksum: str | None = None,
    decoder: str | Path | None = None,
    trust_pickle: bool = False,
) -> dict:
    """What the model jobs need to load a model and to label their stores with it.

    ``path`` and ``decoder`` are the files the model was (so a table row can name its file),
    ``load`` the model string jobs load, ``checksum`` the ``alg:hex`` its weights are verified with.
    """
    return {
        "name": name,
        "load": load,
        "path": str(path),
        "decoder": str(decoder) if decoder else None,
        "sha256": sha256,
        "checksum": checksum or (f"sha256:{sha256}" if sha256 else None),
        "architecture": architecture,
        "trust_pickle": trust_pickle,
    }


def fetch_model(
    name: str,
    *,
    record: str | Path | None = None,
    offline: bool = False,
    sha256: str | None = None,
    trust_pickle: bool = False,
):
    """Download (checksum-verified, with its decoder) into the cache; optionally write the workflow's record.

    Returns the model's files. ``trust_pickle`` (the user's own files only) goes into the record, so
    every job that loads the model follows the one decision.
    """
    from tilesam import models

    files = models.fetch_files(name, offline=offline or None, sha256=sha256)
    if record:
        info = models.model_info(name, trust_pickle=trust_pickle)
        ref = models.parse(name)
        if ref.card is not None:  # name@version: the record keeps meaning this file when a newer version appears
            load, trust = ref.card.spec, False  # registry files are checked by their hash, never by trust
        else:
            load = str(files.weights.resolve())
            if files.decoder is not None:
                load += models.DECODER_SEPARATOR + str(files.decoder.resolve())
            trust = trust_pickle
        entry = _model_record(
            info["name"],
            load,
            files.weights.resolve(),
            info["sha256"],
            info["architecture"],
            checksum=info["checksum"],
            decoder=files.decoder.resolve() if files.decoder else None,
            trust_pickle=trust,
        )
        # the workflow names the record after the model's id (`best-3fa2c1`): the row of a table -> this file
        _write_json(record, {"id": Path(record).stem, **entry})
    return files


def record_finetuned(card: str | Path, out: str | Path) -> None:
    """The workflow's record of a finetuned model, after checking its checkpoint against its card."""
    from tilesam.finetune.card import register_finetuned

    model_card = register_finetuned(card)
    card_file = Path(card).resolve()
    checkpoint = card_file.parent / json.loads(card_file.read_text())["checkpoint"]
    _write_json(
        out, _model_record(model_card.name, str(checkpoint), checkpoint, model_card.sha256, model_card.architecture)
    )


# --- data -------------------------------------------------------------------------------------
def synthetic(name: str, image: str | Path, labels: str | Path) -> None:
    from tilesam.data import synthetic as demo

    specs = demo.demo_specs()
    if name not in specs:
        raise ValueError(f"no synthetic image {name!r}; known: {', '.join(specs)}")
    demo.write_demo(specs[name], image, labels)


def import_image(src: str | Path, dst: str | Path, *, ndim: int, tiling: Tiling, key: str | None = None) -> None:
    from tilesam.data import io

    info = io.import_image(src, dst, ndim=ndim, tile_shape=tiling.tile_shape, key=key)
    log.info("imported %s: shape %s, %s, %d channel(s)", src, info.shape, info.dtype, info.channels)


def import_labels(src: str | Path, dst: str | Path, *, image: str | Path, key: str | None = None) -> None:
    from tilesam.data import io

    io.import_labels(src, dst, image=image, key=key)


# --- embed, segment, stitch -------------------------------------------------------------------
def embed(
    image: str | Path,
    model: str | Path,
    block: int,
    out: str | Path,
    *,
    tiling: Tiling,
    params: EmbedParams,
    device: str,
    mem_mb: float | None = None,
) -> dict:
    """Image-encoder embeddings of one block of tiles (resumes an interrupted block).

    ``mem_mb`` is the job's memory request: ``batch_size: auto`` stays within it.
    """
    from tilesam.embed import embed_block

    sam, record = load_record(model, device)
    grid, prov = _provenance(record, sam, image, tiling, block, params.dtype)
    stats = embed_block(
        sam, prov, image, grid, out, batch_size=params.batch_size, precision=params.precision, mem_mb=mem_mb
    )
    log.info("embedded block %d: %s (%s)", block, stats, record["name"])
    return stats


def searched(params: AmgParams, search_csv: str | Path) -> AmgParams:
    """`params` with the best thresholds of the validation search (its CSV is best first)."""
    import pandas as pd

    best = pd.read_csv(search_csv).iloc[0]
    return replace(
        params, pred_iou_thresh=float(best.pred_iou_thresh), stability_score_thresh=float(best.stability_score_thresh)
    )


def searched_ais(params: AisParams, search_csv: str | Path) -> AisParams:
    """`params` with the best setting of the AIS validation search (its CSV is best first)."""
    import pandas as pd

    from tilesam.segment.search import AIS_KEYS

    table = pd.read_csv(search_csv)
    if missing := [k for k in AIS_KEYS if k not in table]:
        raise ValueError(f"{search_csv}: not an AIS search table (no column {', '.join(missing)})")
    best = table.iloc[0]
    return replace(params, **{k: (int(best[k]) if k == "min_size" else float(best[k])) for k in AIS_KEYS})


def segment(
    image: str | Path,
    model: str | Path,
    embeddings: str | Path,
    block: int,
    out: str | Path,
    *,
    tiling: Tiling,
    amg: AmgParams,
    dtype: str,
    method: str,
    device: str,
    search: str | Path | None = None,
    ais: AisParams | None = None,
) -> dict:
    """Automatic segmentation (amg or ais) of one block of tiles from its stored embeddings.

    `search` is the validation search's CSV of the method: its best setting replaces the config's.
    """
    from tilesam.models.unetr import decoder_upscale
    from tilesam.segment.blocks import segment_block

    sam, record = load_record(model, device)
    grid, prov = _provenance(record, sam, image, tiling, block, dtype)
    model_id = {"model": record["name"], "model_sha256": record["sha256"]}
    if method == "ais":
        decoder, decoder_id = load_instance_decoder(record, sam.device, decoder_upscale(sam))
        params = searched_ais(ais or AisParams(), search) if search else (ais or AisParams())
        stats = segment_block(
            sam, embeddings, asdict(prov), grid, out, method=method, params=params, decoder=decoder,
            decoder_id=decoder_id, model_id=model_id,
        )  # fmt: skip
    else:
        params = searched(amg, search) if search else amg
        stats = segment_block(sam, embeddings, asdict(prov), grid, out, method=method, params=params, model_id=model_id)
    log.info("segmented block %d (%s): %s", block, method, stats)
    return stats


def stitch(image: str | Path, blocks: list[str], out: str | Path, *, tiling: Tiling, params: StitchParams):
    """Per-tile labels of all blocks of an image -> one OME-Zarr label image at `out`."""
    from tilesam.data import io, ome
    from tilesam.segment.results import tile_reader
    from tilesam.stitch.tiles import stitch as stitch_tiles
    from tilesam.tiling import TileGrid

    info = io.read_info(image)
    grid = TileGrid(info.shape, tiling.tile_shape, tiling.halo)
    size = tiling.block_size(grid.n_tiles)
    if len(blocks) != grid.n_blocks(size):
        raise ValueError(f"{image}: {len(blocks)} block stores given, the tile grid has {grid.n_blocks(size)}")
    tile_shape = tiling.tile_shape
    chunks = (1,) * (len(info.shape) - 2) + tuple(min(t, s) for t, s in zip(tile_shape, info.shape[-2:]))
    labels = ome.create(out, info.shape, "uint32", chunks, attrs={"tilesam": {"image": str(image)}})
    result = stitch_tiles(grid, tile_reader(blocks, grid, size), labels, params)
    ome.build_pyramid(out, labels=True, image=image)
    log.info("stitched %s: %s", image, result)
    return result


# --- evaluation ---------------------------------------------------------------------------------
def evaluate(
    pred: str | Path, gt: str | Path, out: str | Path, *, meta: dict | None = None, blocks: list[str | Path] = ()
) -> dict:
    """Scores of a stitched label image against ground truth, with the blocks' costs, written as JSON."""
    import zarr

    from tilesam.data import ome
    from tilesam.metrics import segmentation_scores
    from tilesam.segment.results import costs, params_column

    p, g = ome.open_level0(pred), ome.open_level0(gt)
    if p.shape != g.shape:
        raise ValueError(f"{pred} has shape {p.shape} but its ground truth {gt} has {g.shape}")
    scores = segmentation_scores(g[...], p[...]).as_dict()
    record = {**(meta or {}), "iteration": 0, **(costs(blocks) if blocks else {}), **scores}
    if blocks:  # the parameters the blocks were segmented with (after any threshold search)
        seg = zarr.open_group(str(blocks[0]), mode="r").attrs["tilesam"]["segmentation"]
        record["params"] = json.dumps(params_column(seg))
    _write_json(out, record)
    return record


def prompt_eval(
    image: str | Path,
    model: str | Path,
    embeddings: list[str],
    gt: str | Path,
    mode: str,
    out: str | Path,
    *,
    tiling: Tiling,
    dtype: str,
    device: str,
    seed: int = 0,
    params: PromptParams | None = None,
    meta: dict | None = None,
) -> list[dict]:
    """Prompted (interactive) segmentation of every ground-truth object, scored per iteration."""
    from tilesam.config import PromptParams
    from tilesam.data import ome
    from tilesam.interactive.evaluate import block_embeddings, evaluate_prompts, prompt_params

    params = params or PromptParams()
    sam, record = load_record(model, device)
    grid, prov = _provenance(record, sam, image, tiling, 0, dtype)
    embedding_of = block_embeddings(embeddings, prov.tiles_per_block, asdict(prov))
    gt_labels = ome.open_level0(gt)[...]
    records = evaluate_prompts(sam, gt_labels, grid, embedding_of, mode, seed=seed, feed_logits=params.feed_logits)
    made_with = json.dumps(prompt_params(mode, seed, params.feed_logits))
    meta = {**(meta or {}), "method": mode, "device": str(sam.device), "params": made_with}
    _write_json(out, [{**meta, **r} for r in records])
    log.info("%s prompts: mSA per iteration %s", mode, [round(r["msa"], 3) for r in records])
    return records


def _search_images(record: dict, sam, images: list[dict], tiling: Tiling, dtype: str) -> list:
    """The validation images of a search ({image, gt, embeddings} each), their embeddings read per tile."""
    from tilesam.data import ome
    from tilesam.data.datasets import stem
    from tilesam.interactive.evaluate import block_embeddings
    from tilesam.segment.search import SearchImage

    searched = []
    for item in images:
        tile_grid, prov = _provenance(record, sam, item["image"], tiling, 0, dtype)
        embedding_of = block_embeddings(item["embeddings"], prov.tiles_per_block, asdict(prov))
        searched.append(SearchImage(stem(item["image"]), tile_grid, embedding_of, ome.open_level0(item["gt"])[...]))
    return searched


def amg_search(
    model: str | Path,
    images: list[dict],
    out: str | Path,
    *,
    tiling: Tiling,
    amg: AmgParams,
    grid: SearchGrid,
    stitch_params: StitchParams,
    dtype: str,
    device: str,
):
    """The protocol's AMG threshold search on validation images ({image, gt, embeddings} each)."""
    from tilesam.segment.search import protocol_range, search_amg

    sam, record = load_record(model, device)
    searched_images = _search_images(record, sam, images, tiling, dtype)
    table = search_amg(
        sam,
        searched_images,
        amg,
        pred_iou_grid=protocol_range(*grid.pred_iou_thresh),
        stability_grid=protocol_range(*grid.stability_score_thresh),
        stitch_params=stitch_params,
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    best = table.iloc[0]
    log.info(
        "best AMG thresholds: pred_iou %.3f, stability %.3f (mSA %.3f on %d images)",
        best.pred_iou_thresh,
        best.stability_score_thresh,
        best.mSA,
        len(images),
    )
    return table


def ais_search(
    model: str | Path,
    images: list[dict],
    out: str | Path,
    *,
    tiling: Tiling,
    ais: AisParams,
    grid: AisSearchGrid,
    stitch_params: StitchParams,
    dtype: str,
    device: str,
):
    """The protocol's AIS post-processing search on validation images ({image, gt, embeddings} each)."""
    from tilesam.models.unetr import decoder_upscale
    from tilesam.segment.search import ais_grid, search_ais

    sam, record = load_record(model, device)
    decoder, _ = load_instance_decoder(record, sam.device, decoder_upscale(sam))
    searched_images = _search_images(record, sam, images, tiling, dtype)
    table = search_ais(
        decoder,
        searched_images,
        ais,
        int(sam.image_encoder.img_size),
        grid=ais_grid(grid),
        stitch_params=stitch_params,
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    best = table.iloc[0]
    log.info("best AIS setting: %s (mSA %.3f on %d images)", dict(best.drop("mSA")), best.mSA, len(images))
    return table


# --- report -----------------------------------------------------------------------------------
def benchmark(
    evaluations: list[str], out_dir: str | Path, compare: list[dict], in_domain: list[list[str]] = ()
) -> None:
    """The tables of a run and its bar and iteration figures; in_domain: (dataset, model) trained-on pairs."""
    import pandas as pd

    from tilesam.report import figures
    from tilesam.report.tables import write_tables

    table = write_tables(evaluations, out_dir, compare, in_domain)
    out = Path(out_dir)
    figures.msa_bars(table, out / "msa_bars.png")
    pairs = {(str(d), str(m)) for d, m in in_domain}
    figures.msa_iterations(pd.read_csv(out / "iterations.csv"), out / "msa_iterations.png", pairs)


def figure(
    image: str | Path,
    gt: str | Path | None,
    results: list[str],
    names: list[str],
    out: str | Path,
    title: str = "",
    in_domain: list[str] = (),
):
    """Image, ground truth and each model's automatic segmentation on the same crop (in_domain: names so marked)."""
    from tilesam.report import figures

    if len(names) != len(results):
        raise ValueError(f"{len(names)} names for {len(results)} results")
    figures.qualitative(image, gt, dict(zip(names, results)), out, title=title, in_domain=set(in_domain))


# --- the classical baseline -------------------------------------------------------------------
def classical_foreground(image: str | Path, out: str | Path, *, params: ClassicalParams) -> dict:
    """The whole image's Otsu threshold and foreground side, written as JSON (one per image)."""
    from tilesam.segment.classical import image_foreground

    foreground = asdict(image_foreground(image, params.foreground))
    _write_json(out, foreground)
    log.info("%s: foreground %s", image, foreground)
    return foreground


def classical_segment(
    image: str | Path,
    foreground: str | Path,
    block: int,
    out: str | Path,
    *,
    tiling: Tiling,
    params: ClassicalParams,
    search: str | Path | None = None,
) -> dict:
    """The classical baseline on one block of tiles (the searched sigma and h where a search ran)."""
    from tilesam.data import io
    from tilesam.segment import classical
    from tilesam.tiling import TileGrid

    params = classical.searched(params, search) if search else params
    rule = classical.Foreground(**json.loads(Path(foreground).read_text()))
    grid = TileGrid(io.read_info(image).shape, tiling.tile_shape, tiling.halo)
    stats = classical.segment_block(image, grid, block, tiling.block_size(grid.n_tiles), out, rule, params)
    log.info("classical block %d: %s", block, stats)
    return stats


def classical_search(
    images: list[dict],
    out: str | Path,
    *,
    tiling: Tiling,
    params: ClassicalParams,
    grid: ClassicalGrid,
    stitch_params: StitchParams,
) -> Any:
    """The classical baseline's (sigma, h) search on validation images ({image, gt} each)."""
    from tilesam.data import io, ome
    from tilesam.data.datasets import stem
    from tilesam.segment import classical
    from tilesam.tiling import TileGrid

    searched_images = []
    for item in images:
        info = io.read_info(item["image"])
        pixels = ome.open_level0(item["image"])
        searched_images.append(
            classical.SearchImage(
                stem(item["image"]),
                TileGrid(info.shape, tiling.tile_shape, tiling.halo),
                lambda tile, pixels=pixels, channels=info.channels: io.read_window(
                    pixels, tile.window_slices(), channels
                ),
                classical.image_foreground(item["image"], params.foreground),
                ome.open_level0(item["gt"])[...],
            )
        )
    table = classical.search_classical(searched_images, params, grid, stitch_params)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    best = table.iloc[0]
    log.info(
        "best classical setting: sigma %.2f, h %.2f (mSA %.3f on %d images)", best.sigma, best.h, best.mSA, len(images)
    )
    return table


# --- finetuning -------------------------------------------------------------------------------
def finetune(
    model: str,
    images: list[str],
    labels: list[str],
    out: str | Path,
    *,
    config: FinetuneConfig,
    val_images: list[str] | None = None,
    val_labels: list[str] | None = None,
    val_fraction: float = 0.0,
    name: str | None = None,
    dataset: str | None = None,
    device: str = "auto",
    embedding_cache: str | None = None,
    resume: bool = True,
    progress: bool = True,
    trust_pickle: bool = False,
):
    """Finetune a model on images with instance labels (resumable); writes the checkpoint and its card.

    ``trust_pickle``: the base, a checkpoint file of the user's own, may be fully unpickled."""
    from tilesam.finetune.trainer import finetune as run

    result = run(
        model,
        images,
        labels,
        out,
        val_images=val_images or None,
        val_labels=val_labels or None,
        val_fraction=0.0 if val_images else val_fraction,
        config=config,
        name=name,
        dataset=dataset,
        device=resolve_device(device),
        embedding_cache=embedding_cache,
        resume=resume,
        progress=progress,
        trust_pickle=trust_pickle,
    )
    log.info(
        "finetuned %s: %s (card %s, best epoch %d)", result.name, result.checkpoint, result.card, result.best_epoch
    )
    return result
