rule segment:
    """Automatic segmentation (amg or ais) of one block of tiles from its stored embeddings."""
    input:
        image="results/images/{dataset}/{image}.ome.zarr",
        model="resources/models/{model}.json",
        embeddings=lambda w: embedding_stores(w)[int(w.block)],
        search=lambda w: PLAN.search_result(w.dataset, w.model, w.method),
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
        gpu=GPUS,
        mem_mb=lambda w, attempt: PLAN.mem_mb_segment(w.model, attempt, w.method),
        runtime=lambda w, attempt: PLAN.runtime_segment(attempt, w.model),
    params:
        config=lambda w: json.dumps(PLAN.segment_config(w.model)),
        device=config["device"],
        search=lambda w, input: ["--search", input.search] if input.search else [],
    shell:
        "tilesam segment --image {input.image:q} --model {input.model:q} --block {wildcards.block} "
        "--embeddings {input.embeddings:q} --method {wildcards.method:q} {params.search:q} "
        "--config {params.config:q} --device {params.device:q} --threads {threads} --out {output:q} 2> {log:q}"


rule amg_search:
    """The protocol's AMG threshold search on the validation dataset (decoded once per tile)."""
    input:
        model="resources/models/{model}.json",
        stores=lambda w: [
            path
            for item in PLAN.search_images(w.model, "amg")
            for path in (item["image"], item["gt"], *item["embeddings"])
        ],
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
        gpu=GPUS,
        mem_mb=lambda w, attempt: int(6000 * attempt),
        runtime=lambda w, attempt: int(120 * attempt),
    params:
        images=lambda w: json.dumps(PLAN.search_images(w.model, "amg")),
        config=sections("segmentation", "embeddings", "stitch"),
        device=config["device"],
    shell:
        "tilesam amg-search --model {input.model:q} --images {params.images:q} --config {params.config:q} "
        "--device {params.device:q} --threads {threads} --out {output:q} 2> {log:q}"


rule ais_search:
    """The protocol's AIS post-processing search on the validation dataset (decoder maps once per tile)."""
    input:
        model="resources/models/{model}.json",
        stores=lambda w: [
            path
            for item in PLAN.search_images(w.model, "ais")
            for path in (item["image"], item["gt"], *item["embeddings"])
        ],
    output:
        report(
            "results/benchmark/ais_search/{model}.csv",
            caption="../report/ais_search.rst",
            category="Benchmark",
        ),
    log:
        "logs/ais_search/{model}.log",
    benchmark:
        "logs/benchmarks/ais_search/{model}.tsv"
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=GPUS,
        mem_mb=lambda w, attempt: int(6000 * attempt),
        runtime=lambda w, attempt: int(120 * attempt),
    params:
        images=lambda w: json.dumps(PLAN.search_images(w.model, "ais")),
        config=lambda w: json.dumps(
            {**PLAN.segment_config(w.model), "stitch": config["stitch"]}
        ),
        device=config["device"],
    shell:
        "tilesam ais-search --model {input.model:q} --images {params.images:q} --config {params.config:q} "
        "--device {params.device:q} --threads {threads} --out {output:q} 2> {log:q}"
