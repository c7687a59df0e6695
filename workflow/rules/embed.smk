rule embed:
    """Image-encoder embeddings of one block of tiles (resumes an interrupted block)."""
    input:
        image=paths.IMAGE,
        model=paths.MODEL_RECORD,
    output:
        embeddings_output(paths.EMBEDDINGS),
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
        mem_mb=lambda w, attempt: RES.embed_mb(w.model, attempt),
        runtime=lambda w, attempt: RES.embed_minutes(attempt),
    params:
        config=sections("segmentation", "embeddings"),
        device=config["device"],
        spec=lambda w: PLAN.record_spec(w.model),
        trust_pickle=TRUST,
    shell:
        tilesam("embed")
