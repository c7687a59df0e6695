# Finetuning: a model `<base>-ft-<dataset>` in `models` is made here from `<base>` and the
# labelled images of `<dataset>`, then used like any other model (its record points at the
# checkpoint, checked against its card). Settings: the `finetune:` section of the config.
# A finetuned model's record comes from its card, never from a download.
ruleorder: finetuned_model > fetch_model


rule finetune:
    """Finetune a model on a dataset's annotated images (resumes an interrupted run)."""
    input:
        unpack(lambda w: PLAN.finetune_inputs(w.dataset, w.base)),
    output:
        checkpoint="results/finetuned/{dataset}/{base}.pth",
        card="results/finetuned/{dataset}/{base}.json",
    log:
        "logs/finetune/{dataset}/{base}.log",
    benchmark:
        "logs/benchmarks/finetune/{dataset}/{base}.tsv"
    # the longest job, needed by everything of the finetuned model: start it before the others
    priority: 10
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=GPUS,
        mem_mb=lambda w, input, attempt: PLAN.mem_mb_finetune(
            w.base, len(input.images) + len(input.val_images), attempt
        ),
        runtime=lambda w, attempt: PLAN.runtime_finetune(attempt),
    params:
        spec=lambda w: PLAN.specs[w.base],
        name="{base}-ft-{dataset}",
        val=lambda w, input: (
            ["--val-images", *input.val_images, "--val-labels", *input.val_labels]
            if input.val_images
            else []
        ),
        config=sections("finetune"),
        device=config["device"],
        trust="--trust-pickle" if config["trust_pickle"] else "",
    shell:
        "tilesam finetune --model {params.spec:q} --images {input.images:q} "
        "--labels {input.labels:q} {params.val:q} --out {output.checkpoint:q} --name {params.name:q} "
        "--dataset {wildcards.dataset:q} --config {params.config:q} --device {params.device:q} "
        "--threads {threads} --no-progress {params.trust} 2> {log:q}"


rule finetuned_model:
    """The record of a finetuned model, after checking its checkpoint against its card."""
    input:
        card=lambda w: "results/finetuned/{1}/{0}.json".format(*PLAN.finetuned[w.model]),
    output:
        "resources/models/{model}.json",
    log:
        "logs/finetuned_model/{model}.log",
    wildcard_constraints:
        model="|".join(PLAN.finetuned) or "^$",
    conda:
        "../envs/tilesam.yaml"
    shell:
        "tilesam models record --card {input.card:q} --out {output:q} 2> {log:q}"
