rule benchmark_table:
    """One row per dataset x model x method, the per-image scores, comparisons and figures."""
    input:
        PLAN.evaluations() + PLAN.classical_evaluations(),
    output:
        table=report(
            paths.TABLE,
            caption="../report/table.rst",
            category="Benchmark",
        ),
        markdown=paths.TABLE_MD,
        per_image=report(
            f"{paths.BENCHMARK}/per_image.csv",
            caption="../report/per_image.rst",
            category="Benchmark",
        ),
        iterations=report(
            f"{paths.BENCHMARK}/iterations.csv",
            caption="../report/iterations.rst",
            category="Benchmark",
        ),
        comparison=report(
            f"{paths.BENCHMARK}/comparison.csv",
            caption="../report/comparison.rst",
            category="Benchmark",
        ),
        comparison_md=f"{paths.BENCHMARK}/comparison.md",
        bars=report(
            f"{paths.BENCHMARK}/msa_bars.png",
            caption="../report/msa_bars.rst",
            category="Figures",
        ),
        curves=report(
            f"{paths.BENCHMARK}/msa_iterations.png",
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
        exclude_empty=json.dumps(
            [
                d
                for d, c in config["datasets"].items()
                if c.get("empty_labels") == "exclude"
            ]
        ),
    shell:
        tilesam("benchmark")


rule qualitative_figure:
    """Image, ground truth and every (model, method) row's automatic segmentation on the same crop."""
    input:
        unpack(
            lambda w: {
                k: v
                for k, v in PLAN.qualitative(w.dataset).items()
                if k in ("image", "gt", "results")
            }
        ),
    output:
        report(
            paths.QUALITATIVE,
            caption="../report/qualitative.rst",
            category="Figures",
        ),
    log:
        "logs/qualitative_figure/{dataset}.log",
    conda:
        "../envs/tilesam.yaml"
    params:
        models=lambda w: PLAN.qualitative(w.dataset)["models"],
        methods=lambda w: PLAN.qualitative(w.dataset)["methods"],
        in_domain=lambda w: PLAN.qualitative(w.dataset)["in_domain"],
        title=lambda w: w.dataset,
    shell:
        tilesam("figure")
