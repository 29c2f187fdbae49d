# Stand-alone training: the sampled architectures on every task (in shards, so that small jobs are
# not dominated by start-up), and each search's best architecture on the reference task.


rule train_shard:
    input:
        tracking=ancient(TRACKING),
        archs=f"{RESULTS}/archs/{{space}}/archs.json",
    output:
        results=run_dir("train", "shard{shard}", "results.csv"),
        summary=run_dir("train", "shard{shard}", "summary.json"),
    params:
        cmd=nas_command("train", "train_shard"),
        settings=settings("space", "dataset", "task", "train"),
        shards=NUM_SHARDS,
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "train_shard{shard}.log"),
    shell:
        "{params.cmd} threads={threads} --archs {input.archs} --shard {wildcards.shard}/{params.shards}"
        " --out $(dirname {output.summary}) > {log} 2>&1"


rule retrain:
    input:
        tracking=ancient(TRACKING),
        topk=run_dir("search", "{fitness}", "topk.json"),
    output:
        results=run_dir("retrain", "{fitness}", "results.csv"),
        summary=run_dir("retrain", "{fitness}", "summary.json"),
    params:
        cmd=nas_command("train", "retrain", task=REFERENCE),
        settings=settings("space", "dataset", "train"),
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "retrain_{fitness}.log"),
    shell:
        "{params.cmd} threads={threads} --archs {input.topk} --top 1"
        " --out $(dirname {output.summary}) > {log} 2>&1"
