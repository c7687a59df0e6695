rule segment:
    """Automatic segmentation of one block of tiles from its stored embeddings."""
    input:
        image="results/images/{dataset}/{image}.ome.zarr",
        model="resources/models/{model}.json",
        embeddings="results/embeddings/{dataset}/{image}/{model}/block{block}.zarr",
        search=amg_search_result,
    output:
        directory(
            "results/segmentation/{dataset}/{image}/{model}/{method}/block{block}.zarr"
        ),
    log:
        "logs/segment/{dataset}/{image}/{model}/{method}/block{block}.log",
    benchmark:
        "logs/benchmarks/segment/{dataset}/{image}/{model}/{method}/block{block}.tsv"
    group:
        "blocks"
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=device_gpus(),
        mem_mb=mem_mb_segment,
        runtime=runtime_segment,
    params:
        tiles=TILE_ARGS,
        device=config["device"],
        dtype=EMB["dtype"],
        amg=json.dumps(SEG["amg"]),
        search=lambda wildcards, input: (
            f"--amg-search {input.search}" if input.search else ""
        ),
    shell:
        "tilesam segment --image {input.image:q} --model {input.model:q} {params.tiles} "
        "--block {wildcards.block} --dtype {params.dtype} --device {params.device} "
        "--threads {threads} --embeddings {input.embeddings:q} --method {wildcards.method} "
        "--amg {params.amg:q} {params.search} --out {output:q} 2> {log:q}"


rule amg_search:
    """The protocol's AMG threshold search on the validation dataset (decoded once per tile)."""
    input:
        unpack(amg_search_inputs),
    output:
        report(
            "results/benchmark/amg_search/{model}.csv",
            caption="../report/amg_search.rst",
            category="Benchmark",
        ),
    log:
        "logs/amg_search/{model}.log",
    benchmark:
        "logs/benchmarks/amg_search/{model}.tsv"
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=device_gpus(),
        mem_mb=lambda wildcards, attempt: int(6000 * attempt),
        runtime=lambda wildcards, attempt: int(120 * attempt),
    params:
        tiles=TILE_ARGS,
        device=config["device"],
        dtype=EMB["dtype"],
        amg=json.dumps(SEG["amg"]),
        images=amg_search_args,
        grid=lambda wildcards: "--pred-iou {} {} {} --stability {} {} {}".format(
            *SEARCH["pred_iou_thresh"], *SEARCH["stability_score_thresh"]
        ),
        stitch=json.dumps(config["stitch"]),
    shell:
        "tilesam amg-search --model {input.model:q} {params.tiles} {params.images} "
        "--dtype {params.dtype} --device {params.device} --threads {threads} "
        "--amg {params.amg:q} {params.grid} --stitch {params.stitch:q} --out {output:q} 2> {log:q}"
