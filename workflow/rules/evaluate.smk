rule evaluate:
    """Scores of one stitched label image against its ground truth, with its costs."""
    input:
        pred="results/segmentation/{dataset}/{image}/{model}/{method}/labels.ome.zarr",
        gt="results/labels/{dataset}/{image}.ome.zarr",
        blocks=block_stores,
    output:
        "results/evaluation/{dataset}/{image}/{model}/{method}.json",
    log:
        "logs/evaluate/{dataset}/{image}/{model}/{method}.log",
    wildcard_constraints:
        method="|".join([*SEGMENTERS, CLASSICAL]),
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=mem_mb_image,
        runtime=runtime_image,
    params:
        meta=lambda w: json.dumps(dict(w)),
    shell:
        "tilesam evaluate --pred {input.pred:q} --gt {input.gt:q} --blocks {input.blocks:q} "
        "--meta {params.meta:q} --out {output:q} 2> {log:q}"


rule evaluate_prompts:
    """Prompted (interactive) segmentation of every ground-truth object, scored per iteration."""
    input:
        image="results/images/{dataset}/{image}.ome.zarr",
        gt="results/labels/{dataset}/{image}.ome.zarr",
        model="resources/models/{model}.json",
        embeddings=embedding_stores,
    output:
        "results/evaluation/{dataset}/{image}/{model}/{mode}.json",
    log:
        "logs/evaluate_prompts/{dataset}/{image}/{model}/{mode}.log",
    benchmark:
        "logs/benchmarks/evaluate_prompts/{dataset}/{image}/{model}/{mode}.tsv"
    wildcard_constraints:
        mode="|".join(PROMPT_MODES),
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=GPUS,
        mem_mb=lambda w, attempt: PLAN.mem_mb_prompts(
            w.dataset, w.image, w.model, attempt
        ),
        runtime=runtime_image,
    params:
        config=sections("segmentation", "embeddings", "evaluation"),
        device=config["device"],
        meta=lambda w: json.dumps(dict(w)),
    shell:
        "tilesam prompt-eval --image {input.image:q} --model {input.model:q} --gt {input.gt:q} "
        "--embeddings {input.embeddings:q} --mode {wildcards.mode:q} --meta {params.meta:q} "
        "--config {params.config:q} --device {params.device:q} --threads {threads} --out {output:q} 2> {log:q}"
