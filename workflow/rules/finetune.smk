# Finetuning: a model `<base>-ft-<dataset>` in `models` is made here from `<base>` and the
# labelled images of `<dataset>`, then used like any other model (its record points at the
# checkpoint, checked against its card). Settings: the `finetune:` section of the config.
# A finetuned model's record comes from its card, never from a download.
ruleorder: finetuned_model > fetch_model


rule finetune:
    """Finetune a model on a dataset's annotated images (resumes an interrupted run)."""
    input:
        unpack(finetune_inputs),
    output:
        checkpoint="results/finetuned/{dataset}/{base}.pth",
        card="results/finetuned/{dataset}/{base}.json",
    log:
        "logs/finetune/{dataset}/{base}.log",
    benchmark:
        "logs/benchmarks/finetune/{dataset}/{base}.tsv"
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=device_gpus(),
        mem_mb=mem_mb_finetune,
        runtime=runtime_finetune,
    params:
        spec=lambda wildcards: MODEL_SPECS[wildcards.base],
        name="{base}-ft-{dataset}",
        device=config["device"],
        args=finetune_args,
    shell:
        "tilesam finetune --model {params.spec:q} --images {input.images:q} "
        "--labels {input.labels:q} --out {output.checkpoint:q} --name {params.name:q} "
        "--dataset {wildcards.dataset:q} {params.args} --device {params.device} "
        "--threads {threads} --no-progress 2> {log:q}"


rule finetuned_model:
    """The record of a finetuned model, after checking its checkpoint against its card."""
    input:
        card=lambda wildcards: "results/finetuned/{1}/{0}.json".format(
            *FINETUNED[wildcards.model]
        ),
    output:
        "resources/models/{model}.json",
    log:
        "logs/finetuned_model/{model}.log",
    wildcard_constraints:
        model="|".join(FINETUNED) or "^$",
    conda:
        "../envs/tilesam.yaml"
    shell:
        "tilesam models record --card {input.card:q} --out {output:q} 2> {log:q}"
