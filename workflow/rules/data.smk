rule make_synthetic:
    """tilesam's own demo image with exact ground truth (deterministic)."""
    output:
        image=paths.SYNTHETIC_IMAGE,
        labels=paths.SYNTHETIC_LABELS,
    log:
        "logs/make_synthetic/{dataset}/{image}.log",
    conda:
        "../envs/tilesam.yaml"
    shell:
        tilesam("synthetic")


rule import_image:
    """Any input -> OME-Zarr chunked to the tile grid; checks dtype, shape and NaNs."""
    input:
        lambda w: record(w).image,
    output:
        directory(paths.IMAGE),
    log:
        "logs/import_image/{dataset}/{image}.log",
    benchmark:
        "logs/benchmarks/import_image/{dataset}/{image}.tsv"
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=image_mb,
        runtime=image_minutes,
    params:
        ndim=lambda w: record(w).ndim,
        key=lambda w: record(w).key or "",
        config=sections("segmentation"),
    shell:
        tilesam("import-image")


rule import_labels:
    """Ground truth -> OME-Zarr; an error if it does not match its image."""
    input:
        labels=lambda w: record(w).labels,
        image=paths.IMAGE,
    output:
        directory(paths.LABELS),
    log:
        "logs/import_labels/{dataset}/{image}.log",
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=image_mb,
        runtime=image_minutes,
    params:
        key=lambda w: record(w).key or "",
    shell:
        tilesam("import-labels")
