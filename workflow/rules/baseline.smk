# The classical baseline (tilesam.segment.classical): no model, so every SAM row has a floor.
# Its block stores have the models' layout under model and method `classical`, so `stitch` and
# `evaluate` treat it like any model; the Otsu threshold is one per image, the block jobs share it.
ruleorder: classical_segment > segment


rule classical_foreground:
    """The whole image's Otsu threshold and foreground side (one histogram pass over its chunks)."""
    input:
        "results/images/{dataset}/{image}.ome.zarr",
    output:
        "results/segmentation/{dataset}/{image}/classical/foreground.json",
    log:
        "logs/classical_foreground/{dataset}/{image}.log",
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=mem_mb_image,
        runtime=runtime_image,
    params:
        config=sections("baseline"),
    shell:
        "tilesam classical-foreground --image {input:q} --config {params.config:q} --out {output:q} 2> {log:q}"


rule classical_search:
    """The baseline's sigma and h searched on the validation dataset (best mean mSA first)."""
    input:
        lambda w: [
            path
            for item in PLAN.classical_search_images()
            for path in (item["image"], item["gt"])
        ],
    output:
        report(
            "results/benchmark/classical_search.csv",
            caption="../report/classical_search.rst",
            category="Benchmark",
        ),
    log:
        "logs/classical_search.log",
    benchmark:
        "logs/benchmarks/classical_search.tsv"
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=lambda w, attempt: int(4000 * attempt),
        runtime=lambda w, attempt: int(60 * attempt),
    params:
        images=lambda w: json.dumps(PLAN.classical_search_images()),
        config=sections("segmentation", "stitch", "baseline"),
    shell:
        "tilesam classical-search --images {params.images:q} --config {params.config:q} --out {output:q} 2> {log:q}"


rule classical_segment:
    """The classical baseline on one block of tiles (tile + halo each), for the stitcher."""
    input:
        image="results/images/{dataset}/{image}.ome.zarr",
        threshold="results/segmentation/{dataset}/{image}/classical/foreground.json",
        search=lambda w: PLAN.classical_search_result(w.dataset),
    output:
        directory(
            "results/segmentation/{dataset}/{image}/classical/classical/block{block}.zarr"
        ),
    log:
        "logs/classical_segment/{dataset}/{image}/block{block}.log",
    benchmark:
        "logs/benchmarks/classical_segment/{dataset}/{image}/block{block}.tsv"
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=lambda w, attempt: int(1500 * attempt),
        runtime=lambda w, attempt: PLAN.runtime_image(w.dataset, w.image, attempt),
    params:
        config=sections("segmentation", "baseline"),
        search=lambda w, input: ["--search", input.search] if input.search else [],
    shell:
        "tilesam classical-segment --image {input.image:q} --threshold {input.threshold:q} "
        "--block {wildcards.block} {params.search:q} --config {params.config:q} --out {output:q} 2> {log:q}"
