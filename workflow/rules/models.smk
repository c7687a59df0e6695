rule fetch_model:
    """Download a model (and its decoder file) into the cache, checksum-verified, and record which files it is.

    A local rule: on a cluster it runs on the login node, which has the internet. The record carries
    `trust_pickle` for the user's own files, so every job that loads the model follows it.
    """
    input:
        # a checkpoint file of the user's (none for a registry model): a changed file remakes the record
        lambda w: [str(path) for path in files_of(PLAN.specs[w.model])],
    output:
        paths.MODEL_RECORD,
    log:
        "logs/fetch_model/{model}.log",
    localrule: True
    conda:
        "../envs/tilesam.yaml"
    params:
        spec=lambda w: PLAN.specs[w.model],
        offline="--offline" if config["offline"] else "",
        trust=TRUST,
    shell:
        "tilesam models fetch {params.spec:q} --record {output:q} {params.offline} {params.trust} 2> {log:q}"
