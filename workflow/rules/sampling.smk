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
