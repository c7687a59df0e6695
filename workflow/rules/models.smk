rule fetch_model:
    """Download a model into the cache (checksum-verified) and record which file it is.

    A local rule: on a cluster it runs on the login node, which has the internet.
    """
    output:
        "resources/models/{model}.json",
    log:
        "logs/fetch_model/{model}.log",
    localrule: True
    conda:
        "../envs/tilesam.yaml"
    params:
        spec=lambda w: PLAN.specs[w.model],
        offline="--offline" if config["offline"] else "",
    shell:
        "tilesam models fetch {params.spec:q} --record {output:q} {params.offline} 2> {log:q}"
