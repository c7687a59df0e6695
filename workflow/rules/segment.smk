rule segment:
    """Automatic segmentation of one block of tiles from its stored embeddings (method: amg, ais)."""
    input:
        image=paths.IMAGE,
        model=paths.MODEL_RECORD,
        embeddings=lambda w: embedding_stores(w)[int(w.block)],
        search=lambda w: PLAN.search_result(w.dataset, w.model, w.method),
    output:
        directory(paths.SEGMENTS),
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
        mem_mb=lambda w, attempt: RES.segment_mb(w.model, w.method, attempt),
        runtime=lambda w, attempt: RES.segment_minutes(w.model, attempt),
    params:
        config=lambda w: json.dumps(PLAN.segment_config(w.model)),
        device=config["device"],
        spec=lambda w: PLAN.record_spec(w.model),
        trust_pickle=TRUST,
    shell:
        tilesam("segment")


rule search:
    """A method's parameter search on the validation dataset (the protocol's grid; maps or candidates once per tile)."""
    input:
        model=paths.MODEL_RECORD,
        stores=lambda w: [
            path
            for item in PLAN.search_images(w.model, w.method)
            for path in (item["image"], item["gt"], *item["embeddings"])
        ],
    output:
        report(
            paths.SEARCH,
            caption="../report/search.rst",
            category="Benchmark",
        ),
    log:
        "logs/search/{method}/{model}.log",
    benchmark:
        "logs/benchmarks/search/{method}/{model}.tsv"
    wildcard_constraints:
        method="|".join(SEGMENTERS),
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=GPUS,
        mem_mb=lambda w, attempt: RES.search_mb(attempt),
        runtime=lambda w, attempt: RES.search_minutes(attempt),
    params:
        images=lambda w: json.dumps(PLAN.search_images(w.model, w.method)),
        config=lambda w: json.dumps(PLAN.segment_config(w.model)),
        device=config["device"],
        spec=lambda w: PLAN.record_spec(w.model),
        trust_pickle=TRUST,
    shell:
        tilesam("search")
