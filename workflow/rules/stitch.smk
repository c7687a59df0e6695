rule stitch:
    """Per-tile labels of all blocks -> one consistent label image (OME-Zarr labels)."""
    input:
        image="results/images/{dataset}/{image}.ome.zarr",
        blocks=block_stores,
    output:
        directory(
            "results/segmentation/{dataset}/{image}/{model}/{method}/labels.ome.zarr"
        ),
    log:
        "logs/stitch/{dataset}/{image}/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/stitch/{dataset}/{image}/{model}/{method}.tsv"
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=mem_mb_image,
        runtime=runtime_image,
    params:
        config=sections("segmentation", "stitch"),
    shell:
        "tilesam stitch --image {input.image:q} --blocks {input.blocks:q} "
        "--config {params.config:q} --out {output:q} 2> {log:q}"
