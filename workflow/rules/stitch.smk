rule stitch:
    """Per-tile labels of all blocks -> one consistent label image (OME-Zarr labels)."""
    input:
        image=paths.IMAGE,
        blocks=block_stores,
    output:
        directory(paths.STITCHED),
    log:
        "logs/stitch/{dataset}/{image}/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/stitch/{dataset}/{image}/{model}/{method}.tsv"
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=image_mb,
        runtime=image_minutes,
    params:
        config=sections("segmentation", "stitch"),
    shell:
        tilesam("stitch")
