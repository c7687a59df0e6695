rule segment:
    """Automatic segmentation of one block of tiles from its stored embeddings."""
    input:
        image="results/images/{dataset}/{image}.ome.zarr",
        model="resources/models/{model}.json",
        embeddings="results/embeddings/{dataset}/{image}/{model}/block{block}.zarr",
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
    shell:
        "tilesam segment --image {input.image:q} --model {input.model:q} {params.tiles} "
        "--block {wildcards.block} --dtype {params.dtype} --device {params.device} "
        "--threads {threads} --embeddings {input.embeddings:q} --method {wildcards.method} "
        "--amg {params.amg:q} --out {output:q} 2> {log:q}"
