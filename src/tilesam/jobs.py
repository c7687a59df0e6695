"""One function per workflow job: files in, files out, the logic left to the modules they call.

`tilesam <command>` (cli.py) parses arguments and calls these; the rules call the command.
A job that runs a model loads it once (`load_record`) and keeps it for all its tiles.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tilesam.config import AmgParams, EmbedParams, FinetuneConfig, SearchGrid, StitchParams, Tiling, replace
from tilesam.device import resolve_device

log = logging.getLogger("tilesam")


# --- shared by the model jobs -----------------------------------------------------------------
def load_record(record_path: str | Path, device: str = "auto"):
    """The model of a workflow model record (from `fetch_model` or `record_finetuned`), and the record."""
    from tilesam.models import load_model

    record = json.loads(Path(record_path).read_text())
    return load_model(record["load"], device=resolve_device(device)), record


def _provenance(record: dict, model, image: str | Path, tiling: Tiling, block: int, dtype: str):
    """The tile grid of an imported image and the provenance its block stores carry."""
    from tilesam.data import io
    from tilesam.embed import Provenance
    from tilesam.tiling import TileGrid

    info = io.read_info(image)
    grid = TileGrid(info.shape, tiling.tile_shape, tiling.halo)
    prov = Provenance(
        model=record["name"],
        model_sha256=record["sha256"],
        img_size=int(model.image_encoder.img_size),
        grid=grid.to_dict(),
        block=block,
        tiles_per_block=tiling.tiles_per_block,
        image_signature=info.signature,
        dtype=dtype,
    )
    return grid, prov


def _write_json(out: str | Path, obj: Any) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(obj, indent=1))


# --- models -----------------------------------------------------------------------------------
def _model_record(name: str, load: str, path: str | Path, sha256: str, architecture: str) -> dict:
    """What the model jobs need to load a model and to label their stores with it."""
    return {"name": name, "load": load, "path": str(path), "sha256": sha256, "architecture": architecture}


def fetch_model(name: str, *, record: str | Path | None = None, offline: bool = False) -> Path:
    """Download (checksum-verified) into the cache; optionally write the workflow's record of it."""
    from tilesam import models

    path = models.fetch(name, offline=offline or None)
    if record:
        info = models.model_info(name)
        load = str(Path(name).resolve()) if Path(name).exists() else name
        _write_json(record, _model_record(info["name"], load, path, info["sha256"], info["architecture"]))
    return path


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
    log.info("embedded block %d: %s (%s)", block, stats, prov.model)
    return stats


def searched(params: AmgParams, search_csv: str | Path) -> AmgParams:
    """`params` with the best thresholds of the validation search (its CSV is best first)."""
    import pandas as pd

    best = pd.read_csv(search_csv).iloc[0]
    return replace(
        params, pred_iou_thresh=float(best.pred_iou_thresh), stability_score_thresh=float(best.stability_score_thresh)
    )


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
) -> dict:
    """Automatic segmentation of one block of tiles from its stored embeddings."""
    from tilesam.segment.blocks import segment_block

    sam, record = load_record(model, device)
    grid, prov = _provenance(record, sam, image, tiling, block, dtype)
    params = searched(amg, search) if search else amg
    stats = segment_block(sam, embeddings, asdict(prov), grid, out, method=method, params=params)
    log.info("segmented block %d: %s", block, stats)
    return stats


def stitch(image: str | Path, blocks: list[str], out: str | Path, *, tiling: Tiling, params: StitchParams):
    """Per-tile labels of all blocks of an image -> one OME-Zarr label image at `out`."""
    from tilesam.data import io, ome
    from tilesam.segment.blocks import tile_reader
    from tilesam.stitch.tiles import stitch as stitch_tiles
    from tilesam.tiling import TileGrid

    info = io.read_info(image)
    grid = TileGrid(info.shape, tiling.tile_shape, tiling.halo)
    if len(blocks) != grid.n_blocks(tiling.tiles_per_block):
        raise ValueError(
            f"{image}: {len(blocks)} block stores given, the tile grid has {grid.n_blocks(tiling.tiles_per_block)}"
        )
    tile_shape = tiling.tile_shape
    chunks = (1,) * (len(info.shape) - 2) + tuple(min(t, s) for t, s in zip(tile_shape, info.shape[-2:]))
    labels = ome.create(out, info.shape, "uint32", chunks, attrs={"tilesam": {"image": str(image)}})
    result = stitch_tiles(grid, tile_reader(blocks, grid, tiling.tiles_per_block), labels, params)
    ome.build_pyramid(out, labels=True)
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
    from tilesam.segment.blocks import costs

    p, g = ome.open_level0(pred), ome.open_level0(gt)
    if p.shape != g.shape:
        raise ValueError(f"{pred} has shape {p.shape} but its ground truth {gt} has {g.shape}")
    scores = segmentation_scores(g[...], p[...]).as_dict()
    record = {**(meta or {}), "iteration": 0, **(costs(blocks) if blocks else {}), **scores}
    if blocks:  # the parameters the blocks were segmented with (after any threshold search)
        seg = zarr.open_group(str(blocks[0]), mode="r").attrs["tilesam"]["segmentation"]
        record["params"] = json.dumps({**seg["params"], "prompt": seg["prompt"], "box_sizes": seg["box_sizes"]})
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
    meta: dict | None = None,
) -> list[dict]:
    """Prompted (interactive) segmentation of every ground-truth object, scored per iteration."""
    from tilesam.data import ome
    from tilesam.interactive.evaluate import block_embeddings, evaluate_prompts

    sam, record = load_record(model, device)
    grid, prov = _provenance(record, sam, image, tiling, 0, dtype)
    embedding_of = block_embeddings(embeddings, tiling.tiles_per_block, asdict(prov))
    records = evaluate_prompts(sam, ome.open_level0(gt)[...], grid, embedding_of, mode, seed=seed)
    meta = {**(meta or {}), "method": mode, "device": str(sam.device)}
    _write_json(out, [{**meta, **r} for r in records])
    log.info("%s prompts: mSA per iteration %s", mode, [round(r["msa"], 3) for r in records])
    return records


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
    from tilesam.data import ome
    from tilesam.data.datasets import stem
    from tilesam.interactive.evaluate import block_embeddings
    from tilesam.segment.search import SearchImage, protocol_range, search_amg

    sam, record = load_record(model, device)
    searched_images = []
    for item in images:
        tile_grid, prov = _provenance(record, sam, item["image"], tiling, 0, dtype)
        embedding_of = block_embeddings(item["embeddings"], tiling.tiles_per_block, asdict(prov))
        gt = ome.open_level0(item["gt"])[...]
        searched_images.append(SearchImage(stem(item["image"]), tile_grid, embedding_of, gt))
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


# --- report -----------------------------------------------------------------------------------
def benchmark(evaluations: list[str], out_dir: str | Path, compare: list[dict]) -> None:
    """The tables of a run and its bar and iteration figures."""
    import pandas as pd

    from tilesam.report import figures
    from tilesam.report.tables import write_tables

    table = write_tables(evaluations, out_dir, compare)
    out = Path(out_dir)
    figures.msa_bars(table, out / "msa_bars.png")
    figures.msa_iterations(pd.read_csv(out / "iterations.csv"), out / "msa_iterations.png")


def figure(image: str | Path, gt: str | Path | None, results: list[str], names: list[str], out: str | Path, title=""):
    """Image, ground truth and each model's automatic segmentation on the same crop."""
    from tilesam.report import figures

    if len(names) != len(results):
        raise ValueError(f"{len(names)} names for {len(results)} results")
    figures.qualitative(image, gt, dict(zip(names, results)), out, title=title)


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
):
    """Finetune a model on images with instance labels (resumable); writes the checkpoint and its card."""
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
    )
    log.info(
        "finetuned %s: %s (card %s, best epoch %d)", result.name, result.checkpoint, result.card, result.best_epoch
    )
    return result
