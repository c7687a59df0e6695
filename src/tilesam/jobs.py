"""One function per workflow job: files in, files out, the logic left to the stage modules.

Each signature is the job's whole interface (`tilesam.relay`): the command line (`tilesam <job>`)
and the rule's shell command are built from it, and `JOBS` lists them. Imports of stage modules
stay inside the functions, so a job that runs no model starts without torch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Annotated

from tilesam import config as schema
from tilesam.baseline_jobs import classical_foreground, classical_search, classical_segment
from tilesam.config import (
    AUTO_METHOD,
    AisParams,
    AisSearchGrid,
    AmgParams,
    ApgParams,
    ApgSearchGrid,
    EmbedParams,
    PromptParams,
    SearchGrid,
    StitchParams,
    Tiling,
)
from tilesam.finetune_jobs import finetune
from tilesam.relay import (
    Block,
    Cli,
    Device,
    Gt,
    Image,
    In,
    Json,
    Meta,
    Model,
    Out,
    Output,
    Param,
    Resource,
    Spec,
    Trust,
    Wildcard,
)
from tilesam.runtime import write_json

log = logging.getLogger("tilesam")


# --- data -------------------------------------------------------------------------------------
def synthetic(
    name: Annotated[str, Wildcard("image")],
    image: Annotated[str, Out("image")],
    labels: Annotated[str, Out("labels")],
    /,
) -> None:
    """Write one synthetic demo image and its labels."""
    from tilesam.data import synthetic as demo

    specs = demo.demo_specs()
    if name not in specs:
        raise ValueError(f"no synthetic image {name!r}; known: {', '.join(specs)}")
    demo.write_demo(specs[name], image, labels)


def import_image(
    src: Annotated[str, In("")],
    dst: Output,
    /,
    *,
    ndim: Annotated[int, Param(choices=schema.enum("datasets", "*", "ndim"))] = 2,
    key: Annotated[str | None, Param(help="the dataset inside a container (zarr, n5, h5)")] = None,
    tiling: Tiling,
) -> None:
    """Any input -> OME-Zarr chunked to the tile grid."""
    from tilesam.data import io

    info = io.import_image(src, dst, ndim=ndim, tile_shape=tiling.tile_shape, key=key)
    log.info("imported %s: shape %s, %s, %d channel(s)", src, info.shape, info.dtype, info.channels)


def import_labels(
    src: Annotated[str, In("labels")],
    dst: Output,
    /,
    *,
    image: Image,
    key: Annotated[str | None, Param(help="the dataset inside a container (zarr, n5, h5)")] = None,
) -> None:
    """Ground-truth labels -> OME-Zarr, checked against the image."""
    from tilesam.data import io

    io.import_labels(src, dst, image=image, key=key)


# --- embed, segment, stitch -------------------------------------------------------------------
def embed(
    *,
    image: Image,
    model: Model,
    spec: Spec,
    trust_pickle: Trust = False,
    block: Block,
    out: Output,
    tiling: Tiling,
    params: EmbedParams,
    device: Device = "auto",
    mem_mb: Annotated[float | None, Resource("the job's memory request (MB): batch_size auto stays within it")] = None,
) -> dict:
    """Embed the tiles of one block (resumes an interrupted block)."""
    from tilesam.embed import embed_block
    from tilesam.runtime import ENCODER, keep_freed_memory, load_record, provenance

    keep_freed_memory()  # the encoder's large tensors reuse freed memory; its peak is small (1.6 GB, vit_b)
    sam, record = load_record(model, spec, trust_pickle, device, parts=ENCODER)
    grid, prov = provenance(sam, record, image, tiling, block, params.dtype)
    stats = embed_block(
        sam, prov, image, grid, out, batch_size=params.batch_size, precision=params.precision, mem_mb=mem_mb
    )
    log.info("embedded block %d: %s (%s)", block, stats, record.name)
    return stats


#: what a method's search tunes: the keys of its grid
GRIDS = {"amg": SearchGrid, "ais": AisSearchGrid, "apg": ApgSearchGrid}
SEARCHED = {method: tuple(f.name for f in fields(grid)) for method, grid in GRIDS.items()}


def choose(searches: list[str]) -> tuple[str, str, dict]:
    """`auto` with validation data: the method (ais or apg) whose search scored best (ties: ais, micro-sam's
    default), its search table, and the record of the choice for the table's params column."""
    import pandas as pd

    scores, tables = {}, {}
    for table in searches:
        found = pd.read_csv(table)
        method = next((m for m in ("ais", "apg") if set(SEARCHED[m]) <= set(found)), None)
        if method is None:
            raise ValueError(f"{table}: neither an AIS nor an APG search table")
        scores[method], tables[method] = float(found["mSA"].iloc[0]), table
    method = max(scores, key=lambda m: (scores[m], m == "ais"))
    return method, tables[method], {"auto": {"method": method, "validation_mSA": scores}}


def segment(
    *,
    image: Image,
    model: Model,
    spec: Spec,
    trust_pickle: Trust = False,
    embeddings: Annotated[str, In(help="the block's embedding store")],
    block: Block,
    method: Annotated[str, Wildcard(choices=(*schema.SEGMENTERS, AUTO_METHOD))],
    search: Annotated[list[str] | None, In(help="the method's search table (CSV); auto: the AIS and APG ones")] = None,
    out: Output,
    tiling: Tiling,
    embedding: EmbedParams,
    amg: AmgParams,
    ais: AisParams,
    apg: ApgParams,
    device: Device = "auto",
) -> dict:
    """Automatic segmentation of one block from its embeddings."""
    import torch

    from tilesam.models.unetr import decoder_upscale
    from tilesam.runtime import METHOD_PARTS, keep_freed_memory, load_instance_decoder, load_record, provenance
    from tilesam.segment.blocks import segment_block

    chosen, table, why = choose(search) if method == AUTO_METHOD else (method, (search or [None])[0], {})
    if chosen == "ais":  # the decoder's allocations repeat tile by tile: freed memory serves the next tile
        keep_freed_memory()
    params = {"amg": amg, "ais": ais, "apg": apg}[chosen]
    params = schema.best_row(params, table, SEARCHED[chosen]) if table else params
    sam, record = load_record(model, spec, trust_pickle, device, parts=METHOD_PARTS[chosen])
    grid, prov = provenance(sam, record, image, tiling, block, embedding.dtype)
    decoder = {}
    if chosen != "amg":
        decoder = dict(zip(("decoder", "decoder_id"), load_instance_decoder(record, sam.device, decoder_upscale(sam))))
    model_id = {"model": record.name, "model_sha256": record.sha256, **why}
    workers = torch.get_num_threads() if sam.device.type == "cuda" else 1  # AIS post-processing beside the GPU
    stats = segment_block(
        sam, embeddings, prov, grid, out, method=chosen, params=params, model_id=model_id, workers=workers, **decoder
    )
    log.info("segmented block %d (%s): %s", block, f"auto: {chosen}" if why else method, stats)
    return stats


def stitch(
    *,
    image: Image,
    blocks: Annotated[list[str], In(help="the image's segmentation block stores, in order")],
    out: Output,
    tiling: Tiling,
    params: StitchParams,
):
    """Join per-tile labels into one label image."""
    from tilesam.data import io, ome
    from tilesam.segment.results import tile_reader
    from tilesam.stitch.chunks import resolve_workers
    from tilesam.stitch.tiles import stitch as stitch_tiles

    info = io.read_info(image)
    grid = tiling.grid(info.shape)
    if len(blocks) != tiling.n_blocks(info.shape):
        raise ValueError(f"{image}: {len(blocks)} block stores given, the tile grid has {tiling.n_blocks(info.shape)}")
    labels = ome.create(out, info.shape, "uint32", tiling.chunks(info.shape), attrs={"tilesam": {"image": str(image)}})
    result = stitch_tiles(grid, tile_reader(blocks, grid, tiling.block_size(grid.n_tiles)), labels, params)
    ome.build_pyramid(out, labels=True, image=image, workers=resolve_workers(params.workers))
    log.info("stitched %s: %s", image, result)
    return result


# --- evaluation ---------------------------------------------------------------------------------
def evaluate(
    *,
    pred: Annotated[str, In(help="the stitched labels (OME-Zarr)")],
    gt: Gt,
    blocks: Annotated[list[str], In(help="the image's segmentation block stores (cost columns)")] = (),
    meta: Meta = None,
    out: Output,
) -> dict:
    """Scores of a label image against ground truth."""
    import zarr

    from tilesam.data import io, ome
    from tilesam.metrics import segmentation_scores
    from tilesam.segment.results import costs, params_column

    p, g = ome.open_level0(pred), ome.open_level0(gt)
    if p.shape != g.shape:
        raise ValueError(f"{pred} has shape {p.shape} but its ground truth {gt} has {g.shape}")
    scores = segmentation_scores(g[...], p[...]).as_dict()
    record = {**(meta or {}), "iteration": 0, **(costs(blocks) if blocks else {}), **scores, **io.labels_record(gt)}
    if blocks:  # the parameters the blocks were segmented with (after any search)
        seg = zarr.open_group(str(blocks[0]), mode="r").attrs["tilesam"]["segmentation"]
        record["params"] = json.dumps(params_column(seg))
    write_json(out, record)
    return record


def prompt_eval(
    *,
    image: Image,
    model: Model,
    spec: Spec,
    trust_pickle: Trust = False,
    gt: Gt,
    embeddings: Annotated[list[str], In(help="the image's embedding stores, in order")],
    mode: Annotated[str, Wildcard("method", choices=schema.PROMPT_MODES)],
    seed: Annotated[int, Cli("prompt sampling seed")] = 0,
    meta: Meta = None,
    out: Output,
    tiling: Tiling,
    embedding: EmbedParams,
    params: PromptParams,
    device: Device = "auto",
) -> list[dict]:
    """Prompted (interactive) evaluation of every ground-truth object from stored embeddings."""
    from tilesam.data import io, ome
    from tilesam.interactive.evaluate import block_embeddings, evaluate_prompts, prompt_params
    from tilesam.runtime import PROMPTED, load_record, provenance

    sam, record = load_record(model, spec, trust_pickle, device, parts=PROMPTED)
    grid, prov = provenance(sam, record, image, tiling, 0, embedding.dtype)
    embedding_of = block_embeddings(embeddings, prov)
    gt_labels = ome.open_level0(gt)[...]
    records = evaluate_prompts(sam, gt_labels, grid, embedding_of, mode, seed=seed, feed_logits=params.feed_logits)
    made_with = json.dumps(prompt_params(mode, seed, params.feed_logits))
    meta = {**(meta or {}), "method": mode, "device": str(sam.device), "params": made_with}
    write_json(out, [{**meta, **r, **io.labels_record(gt)} for r in records])
    log.info("%s prompts: mSA per iteration %s", mode, [round(r["msa"], 3) for r in records])
    return records


def search(
    *,
    model: Model,
    spec: Spec,
    trust_pickle: Trust = False,
    method: Annotated[str, Wildcard(choices=tuple(SEARCHED))],
    images: Annotated[Json, Param(help='JSON list of {"image", "gt", "embeddings": [block stores]}')],
    out: Annotated[str, Out(help="CSV: mSA per setting, best first")],
    tiling: Tiling,
    embedding: EmbedParams,
    amg: AmgParams,
    amg_grid: SearchGrid,
    ais: AisParams,
    ais_grid: AisSearchGrid,
    apg: ApgParams,
    apg_grid: ApgSearchGrid,
    stitch: StitchParams,
    device: Device = "auto",
):
    """A method's parameter search on validation images (the protocol's grid)."""
    from tilesam.data import ome
    from tilesam.data.datasets import stem
    from tilesam.interactive.evaluate import block_embeddings
    from tilesam.runtime import METHOD_PARTS, load_instance_decoder, load_record, provenance
    from tilesam.segment import search as searches

    sam, record = load_record(model, spec, trust_pickle, device, parts=METHOD_PARTS[method])
    searched = []
    for item in images:
        grid, prov = provenance(sam, record, item["image"], tiling, 0, embedding.dtype)
        embedding_of = block_embeddings(item["embeddings"], prov)
        gt = ome.open_level0(item["gt"])[...]
        searched.append(searches.SearchImage(stem(item["image"]), grid, embedding_of, gt))
    if method == "amg":
        table = searches.search_amg(
            sam,
            searched,
            amg,
            pred_iou_grid=searches.protocol_range(*amg_grid.pred_iou_thresh),
            stability_grid=searches.protocol_range(*amg_grid.stability_score_thresh),
            stitch_params=stitch,
        )
    else:
        from tilesam.models.unetr import decoder_upscale

        decoder, _ = load_instance_decoder(record, sam.device, decoder_upscale(sam))
        size = int(sam.image_encoder.img_size)
        if method == "ais":
            grid = searches.ais_grid(ais_grid)
            table = searches.search_ais(decoder, searched, ais, size, grid=grid, stitch_params=stitch)
        else:
            grid = searches.apg_grid(apg_grid)
            table = searches.search_apg(sam, decoder, searched, apg, size, grid=grid, stitch_params=stitch)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    log.info("best %s setting: %s (on %d images)", method, dict(table.iloc[0]), len(images))
    return table


# --- report -----------------------------------------------------------------------------------
def benchmark(
    evaluations: Annotated[list[str], In("")],
    /,
    *,
    table: Annotated[str, Out("table", "table.csv to write; the other tables and figures go beside it")],
    compare: Annotated[Json, Param(help='JSON list of {"vanilla": model, "finetuned": model} pairs')] = None,
    in_domain: Annotated[Json, Param(help="JSON list of [dataset, model] pairs: the model was trained on it")] = None,
    exclude_empty: Annotated[
        Json, Param(help="JSON list of datasets whose images without objects are left out")
    ] = None,
) -> None:
    """Tables and figures from per-image evaluations."""
    import pandas as pd

    from tilesam.report import figures
    from tilesam.report.tables import write_tables

    in_domain = in_domain or []
    out = Path(table).parent
    table = write_tables(evaluations, out, compare or [], in_domain, exclude_empty=exclude_empty or ())
    figures.msa_bars(table, out / "msa_bars.png")
    pairs = {(str(d), str(m)) for d, m in in_domain}
    figures.msa_iterations(pd.read_csv(out / "iterations.csv"), out / "msa_iterations.png", pairs)


def figure(
    *,
    image: Image,
    gt: Annotated[str | None, In(help="ground-truth labels, if any")] = None,
    results: Annotated[list[str], In(help="stitched labels to show, one panel each")],
    models: Annotated[list[str], Param(help="the model of each result")],
    methods: Annotated[list[str], Param(help="the method of each result")],
    title: Annotated[str, Param("title")] = "",
    in_domain: Annotated[list[str], Param(help="models trained on this data (their panels are marked)")] = (),
    out: Output,
):
    """Qualitative panel: image, ground truth and every (model, method) result on one crop."""
    from tilesam.report import figures

    if not len(models) == len(methods) == len(results):
        raise ValueError(f"{len(models)} models and {len(methods)} methods for {len(results)} results")
    shown = dict(zip(zip(models, methods), results))
    figures.qualitative(image, gt, shown, out, title=title, in_domain=set(in_domain))


def export(
    labels: Annotated[str, Cli("labels.ome.zarr from the stitch job")],
    out: Annotated[str, Cli("TIFF to write")],
    /,
    *,
    table: Annotated[str | None, Cli("CSV of the instances (id, area, bounding box, centroid)")] = None,
    force: Annotated[bool, Cli("replace an existing TIFF or CSV (else refused)")] = False,
) -> None:
    """A stitched label image (OME-Zarr) -> TIFF, and its instance table as CSV."""
    from tilesam.stitch.export import export_labels

    print(export_labels(labels, out, table=table, force=force))


#: every job: `tilesam <name>` runs it, a rule's `shell: tilesam("<name>")` calls it
JOBS = {
    "synthetic": synthetic,
    "import-image": import_image,
    "import-labels": import_labels,
    "embed": embed,
    "segment": segment,
    "stitch": stitch,
    "evaluate": evaluate,
    "prompt-eval": prompt_eval,
    "search": search,
    "benchmark": benchmark,
    "figure": figure,
    "export": export,
    "classical-foreground": classical_foreground,
    "classical-segment": classical_segment,
    "classical-search": classical_search,
    "finetune": finetune,
}
