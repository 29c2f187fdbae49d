# The architectures every task trains stand-alone: the same list for all tasks, datasets and seeds.


rule sample:
    input:
        tracking=ancient(TRACKING),
    output:
        archs=f"{RESULTS}/archs/{{space}}/archs.json",
        summary=f"{RESULTS}/archs/{{space}}/summary.json",
    params:
        cmd=nas_command("sample", "sample"),
        settings=settings("space", "sample", "seed"),
    log:
        f"{RESULTS}/logs/sample/{{space}}.log",
    shell:
        "{params.cmd} --out $(dirname {output.summary}) > {log} 2>&1"


rule sample_all:
    """Every cell of the space, for study.score_archs: all (in a seeded order; scoring does not depend on it)."""
    input:
        tracking=ancient(TRACKING),
    output:
        archs=f"{RESULTS}/archs_all/{{space}}/archs.json",
        summary=f"{RESULTS}/archs_all/{{space}}/summary.json",
    params:
        cmd=nas_command("sample", "sample_all"),
        settings=settings("space", "seed"),
        cells=NUM_SCORED,
    log:
        f"{RESULTS}/logs/sample/{{space}}_all.log",
    shell:
        "{params.cmd} sample.num_archs={params.cells} sample.trainable_only=false"
        " --out $(dirname {output.summary}) > {log} 2>&1"
