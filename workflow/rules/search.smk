# Score the sampled architectures on each supernet, and search it with each fitness.


rule score:
    input:
        tracking=ancient(TRACKING),
        supernet=run_dir("supernet", "summary.json"),
        archs=f"{RESULTS}/archs/{{space}}/archs.json",
    output:
        scores=run_dir("score", "scores.csv"),
        summary=run_dir("score", "summary.json"),
    params:
        cmd=nas_command("score", "score"),
        settings=settings("score"),
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "score.log"),
    shell:
        "{params.cmd} threads={threads} --supernet $(dirname {input.supernet}) --archs {input.archs}"
        " --out $(dirname {output.summary}) > {log} 2>&1"


rule search:
    input:
        tracking=ancient(TRACKING),
        supernet=run_dir("supernet", "summary.json"),
    output:
        topk=run_dir("search", "{fitness}", "topk.json"),
        summary=run_dir("search", "{fitness}", "summary.json"),
    params:
        cmd=nas_command("search", "search"),
        settings=settings("search", "score"),
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "search_{fitness}.log"),
    shell:
        "{params.cmd} threads={threads} search.fitness={wildcards.fitness}"
        " --supernet $(dirname {input.supernet}) --out $(dirname {output.summary}) > {log} 2>&1"
