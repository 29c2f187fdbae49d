# One single-path supernet per (space, dataset, task, seed); it keeps its epoch-0 and final weights.


rule train_supernet:
    input:
        tracking=ancient(TRACKING),
    output:
        summary=run_dir("supernet", "summary.json"),
    params:
        cmd=nas_command("train-supernet", "train_supernet"),
        settings=settings("space", "dataset", "task", "supernet"),
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "supernet.log"),
    shell:
        "{params.cmd} threads={threads} --out $(dirname {output.summary}) > {log} 2>&1"
