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
        gpu=GPUS,
        mem_mb=lambda w, attempt: PLAN.mem_mb_embed(w.model, attempt),
        runtime=lambda w, attempt: PLAN.runtime_embed(attempt),
    params:
        config=sections("segmentation", "embeddings"),
        device=config["device"],
    shell:
        "tilesam embed --image {input.image:q} --model {input.model:q} --block {wildcards.block} "
        "--config {params.config:q} --device {params.device:q} --threads {threads} --mem-mb {resources.mem_mb} "
        "--out {output:q} 2> {log:q}"
