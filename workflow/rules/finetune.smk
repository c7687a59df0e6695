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
        checkpoint=paths.FINETUNED,
        card=paths.FINETUNED_CARD,
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
        mem_mb=lambda w, input, attempt: RES.finetune_mb(
            w.base, len(input.images) + len(input.val_images), attempt
        ),
        runtime=lambda w, attempt: RES.finetune_minutes(attempt),
    params:
        spec=lambda w: PLAN.specs[w.base],
        name="{base}-ft-{dataset}",
        val_fraction=config["finetune"]["val_fraction"],
        config=sections("finetune"),
        device=config["device"],
        no_progress="--no-progress",
        trust_pickle=TRUST,
    shell:
        tilesam("finetune")


rule finetuned_model:
    """The record of a finetuned model, after checking its checkpoint against its card."""
    input:
        card=lambda w: paths.FINETUNED_CARD.format(
            base=PLAN.finetuned[w.model][0], dataset=PLAN.finetuned[w.model][1]
        ),
    output:
        paths.MODEL_RECORD,
    log:
        "logs/finetuned_model/{model}.log",
    wildcard_constraints:
        model="|".join(PLAN.finetuned) or "^$",
    conda:
        "../envs/tilesam.yaml"
    params:
        trust=TRUST,
    shell:
        "tilesam models record --card {input.card:q} --out {output:q} {params.trust} 2> {log:q}"
