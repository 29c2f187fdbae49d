# Score the sampled architectures (or, with study.score_archs: all, every cell of the space) on each
# supernet in shards of study.score_shard_size, and search it with each fitness.


rule score_shard:
    input:
        tracking=ancient(TRACKING),
        supernet=run_dir("supernet", "summary.json"),
        archs=SCORE_ARCHS,
    output:
        scores=run_dir("score", "shard{shard}", "scores.csv"),
        summary=run_dir("score", "shard{shard}", "summary.json"),
    params:
        cmd=nas_command("score", "score_shard"),
        settings=settings("score"),
        shards=NUM_SCORE_SHARDS,
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "score_shard{shard}.log"),
    shell:
        "{params.cmd} threads={threads} --supernet $(dirname {input.supernet}) --archs {input.archs}"
        " --shard {wildcards.shard}/{params.shards} --out $(dirname {output.summary}) > {log} 2>&1"


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
