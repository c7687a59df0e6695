rule benchmark_table:
    """One row per dataset x model x method, the per-image scores, comparisons and figures."""
    input:
        PLAN.evaluations() + PLAN.classical_evaluations(),
    output:
        table=report(
            "results/benchmark/table.csv",
            caption="../report/table.rst",
            category="Benchmark",
        ),
        markdown="results/benchmark/table.md",
        per_image="results/benchmark/per_image.csv",
        iterations="results/benchmark/iterations.csv",
        comparison=report(
            "results/benchmark/comparison.csv",
            caption="../report/comparison.rst",
            category="Benchmark",
        ),
        comparison_md="results/benchmark/comparison.md",
        bars=report(
            "results/benchmark/msa_bars.png",
            caption="../report/msa_bars.rst",
            category="Figures",
        ),
        curves=report(
            "results/benchmark/msa_iterations.png",
            caption="../report/msa_iterations.rst",
            category="Figures",
        ),
    log:
        "logs/benchmark_table.log",
    conda:
        "../envs/tilesam.yaml"
    params:
        compare=json.dumps(config["compare"]),
        in_domain=json.dumps(PLAN.in_domain()),
    shell:
        "tilesam benchmark {input:q} --out-dir results/benchmark --compare {params.compare:q} "
        "--in-domain {params.in_domain:q} 2> {log:q}"


rule qualitative_figure:
    """Image, ground truth and each model's automatic segmentation on the same crop."""
    input:
        unpack(lambda w: PLAN.qualitative_inputs(w.dataset)),
        baseline=lambda w: PLAN.classical_qualitative(w.dataset),
    output:
        report(
            "results/benchmark/qualitative_{dataset}.png",
            caption="../report/qualitative.rst",
            category="Figures",
        ),
    log:
        "logs/qualitative_figure/{dataset}.log",
    conda:
        "../envs/tilesam.yaml"
    params:
        names=lambda w: PLAN.qualitative_models(w.dataset),
        baseline=lambda w, input: [CLASSICAL] if input.baseline else [],
        in_domain=lambda w: PLAN.in_domain_models(w.dataset),
    shell:
        "tilesam figure --image {input.image:q} --gt {input.gt:q} --results {input.results:q} {input.baseline:q} "
        "--names {params.names:q} {params.baseline:q} --in-domain {params.in_domain:q} --title {wildcards.dataset:q} --out {output:q} 2> {log:q}"
