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
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=mem_mb_image,
        runtime=runtime_image,
    params:
        meta=lambda wildcards: json.dumps(
            {**wildcards, "params": json.dumps(SEG[wildcards.method])}
        ),
    shell:
        "tilesam evaluate --pred {input.pred:q} --gt {input.gt:q} --blocks {input.blocks:q} "
        "--meta {params.meta:q} --out {output:q} 2> {log:q}"
