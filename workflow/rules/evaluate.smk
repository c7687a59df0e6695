rule evaluate:
    """Scores of one stitched label image against its ground truth, with its costs."""
    input:
        pred=paths.STITCHED,
        gt=paths.LABELS,
        blocks=block_stores,
    output:
        paths.EVALUATION,
    log:
        "logs/evaluate/{dataset}/{image}/{model}/{method}.log",
    wildcard_constraints:
        method="|".join([*SEGMENTERS, AUTO_METHOD, CLASSICAL]),
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=image_mb,
        runtime=image_minutes,
    params:
        meta=lambda w: json.dumps(dict(w)),
    shell:
        tilesam("evaluate")


rule evaluate_prompts:
    """Prompted (interactive) segmentation of every ground-truth object, scored per iteration."""
    input:
        image=paths.IMAGE,
        gt=paths.LABELS,
        model=paths.MODEL_RECORD,
        embeddings=embedding_stores,
    output:
        paths.EVALUATION,
    log:
        "logs/evaluate_prompts/{dataset}/{image}/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/evaluate_prompts/{dataset}/{image}/{model}/{method}.tsv"
    wildcard_constraints:
        method="|".join(PROMPT_MODES),
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=GPUS,
        mem_mb=lambda w, attempt: RES.prompts_mb(w.dataset, w.image, w.model, attempt),
        runtime=image_minutes,
    params:
        config=sections("segmentation", "embeddings", "evaluation"),
        device=config["device"],
        spec=lambda w: PLAN.record_spec(w.model),
        trust_pickle=TRUST,
        meta=lambda w: json.dumps({**dict(w), "mode": w.method}),
    shell:
        tilesam("prompt-eval")
