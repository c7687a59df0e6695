# The classical baseline (tilesam.segment.classical): no model, so every SAM row has a floor.
# Its block stores have the models' layout under model and method `classical`, so `stitch` and
# `evaluate` treat it like any model; the Otsu threshold is one per image, the block jobs share it.
ruleorder: classical_segment > segment


rule classical_foreground:
    """The whole image's Otsu threshold and foreground side (one histogram pass over its chunks)."""
    input:
        image=paths.IMAGE,
    output:
        paths.FOREGROUND,
    log:
        "logs/classical_foreground/{dataset}/{image}.log",
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=image_mb,
        runtime=image_minutes,
    params:
        config=sections("baseline"),
    shell:
        tilesam("classical-foreground")


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
            paths.CLASSICAL_SEARCH,
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
        mem_mb=lambda w, attempt: RES.classical_search_mb(attempt),
        runtime=lambda w, attempt: RES.classical_search_minutes(attempt),
    params:
        images=lambda w: json.dumps(PLAN.classical_search_images()),
        config=sections("segmentation", "stitch", "baseline"),
    shell:
        tilesam("classical-search")


rule classical_segment:
    """The classical baseline on one block of tiles (tile + halo each), for the stitcher."""
    input:
        image=paths.IMAGE,
        threshold=paths.FOREGROUND,
        search=lambda w: PLAN.classical_search_result(w.dataset),
    output:
        directory(
            paths.SEGMENTS.replace("{model}/{method}", f"{CLASSICAL}/{CLASSICAL}")
        ),
    log:
        "logs/classical_segment/{dataset}/{image}/block{block}.log",
    benchmark:
        "logs/benchmarks/classical_segment/{dataset}/{image}/block{block}.tsv"
    conda:
        "../envs/tilesam.yaml"
    resources:
        mem_mb=lambda w, attempt: RES.classical_block_mb(attempt),
        runtime=image_minutes,
    params:
        config=sections("segmentation", "baseline"),
    shell:
        tilesam("classical-segment")
