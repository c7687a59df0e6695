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
        lambda wildcards: record(wildcards).image,
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
        ndim=lambda wildcards: record(wildcards).ndim,
        key=lambda wildcards: (
            f"--key {record(wildcards).key}" if record(wildcards).key else ""
        ),
        tile_shape=" ".join(map(str, SEG["tile_shape"])),
    shell:
        "tilesam import-image {input:q} {output:q} --ndim {params.ndim} "
        "--tile-shape {params.tile_shape} {params.key} 2> {log:q}"


rule import_labels:
    """Ground truth -> OME-Zarr; an error if it does not match its image."""
    input:
        labels=lambda wildcards: record(wildcards).labels,
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
        key=lambda wildcards: (
            f"--key {record(wildcards).key}" if record(wildcards).key else ""
        ),
    shell:
        "tilesam import-labels {input.labels:q} {output:q} --image {input.image:q} {params.key} 2> {log:q}"
