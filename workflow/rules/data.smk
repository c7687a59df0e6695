rule make_synthetic:
    """tilesam's own demo image with exact ground truth (deterministic)."""
    output:
        image="results/synthetic/{dataset}/images/{image}.tif",
        labels="results/synthetic/{dataset}/labels/{image}.tif",
    log:
        "logs/make_synthetic/{dataset}/{image}.log",
    conda:
        "../envs/tilesam.yaml"
    shell:
        "tilesam synthetic {wildcards.image:q} {output.image:q} {output.labels:q} 2> {log:q}"


rule import_image:
    """Any input -> OME-Zarr chunked to the tile grid; checks dtype, shape and NaNs."""
    input:
        lambda w: record(w).image,
    output:
        directory("results/images/{dataset}/{image}.ome.zarr"),
    log:
        "logs/import_image/{dataset}/{image}.log",
    benchmark:
        "logs/benchmarks/import_image/{dataset}/{image}.tsv"
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=mem_mb_image,
        runtime=runtime_image,
    params:
        ndim=lambda w: record(w).ndim,
        key=lambda w: ["--key", record(w).key] if record(w).key else [],
        config=sections("segmentation"),
    shell:
        "tilesam import-image {input:q} {output:q} --ndim {params.ndim} {params.key:q} "
        "--config {params.config:q} 2> {log:q}"


rule import_labels:
    """Ground truth -> OME-Zarr; an error if it does not match its image."""
    input:
        labels=lambda w: record(w).labels,
        image="results/images/{dataset}/{image}.ome.zarr",
    output:
        directory("results/labels/{dataset}/{image}.ome.zarr"),
    log:
        "logs/import_labels/{dataset}/{image}.log",
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=mem_mb_image,
        runtime=runtime_image,
    params:
        key=lambda w: ["--key", record(w).key] if record(w).key else [],
    shell:
        "tilesam import-labels {input.labels:q} {output:q} --image {input.image:q} {params.key:q} 2> {log:q}"
