rule embed:
    """Image-encoder embeddings of one block of tiles (resumes an interrupted block)."""
    input:
        image="results/images/{dataset}/{image}.ome.zarr",
        model="resources/models/{model}.json",
    output:
        embeddings_output(
            "results/embeddings/{dataset}/{image}/{model}/block{block}.zarr"
        ),
    log:
        "logs/embed/{dataset}/{image}/{model}/block{block}.log",
    benchmark:
        "logs/benchmarks/embed/{dataset}/{image}/{model}/block{block}.tsv"
    group:
        "blocks"
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=device_gpus(),
        mem_mb=mem_mb_embed,
        runtime=runtime_embed,
    params:
        tiles=TILE_ARGS,
        device=config["device"],
        dtype=EMB["dtype"],
        precision=EMB["precision"],
        batch_size=EMB["batch_size"],
    shell:
        "tilesam embed --image {input.image:q} --model {input.model:q} {params.tiles} "
        "--block {wildcards.block} --dtype {params.dtype} --precision {params.precision} "
        "--batch-size {params.batch_size} --device {params.device} --threads {threads} "
        "--out {output:q} 2> {log:q}"
