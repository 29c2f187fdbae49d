# Differentiable searches (DARTS-V1/V2, GDAS, UNAS): one bi-level job per (space, dataset, search task, seed,
# method), the derived cell retrained on the reference task (study.retrain_derived), tables and figures.
# Every method of a study runs with the study's one `differentiable` section; only the method differs.


rule search_differentiable:
    input:
        tracking=ancient(TRACKING),
    output:
        summary=run_dir("dsearch", "{method}", "summary.json"),
        topk=run_dir("dsearch", "{method}", "topk.json"),
        metrics=run_dir("dsearch", "{method}", "metrics.csv"),
        derived=run_dir("dsearch", "{method}", "derived.csv"),
        alphas=run_dir("dsearch", "{method}", "alphas.csv"),
    params:
        cmd=nas_command("search-differentiable", "search_differentiable"),
        settings=settings("space", "dataset", "task", "differentiable", "ground_truth"),
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "dsearch_{method}.log"),
    shell:
        "{params.cmd} threads={threads} differentiable.method={wildcards.method}"
        " --out $(dirname {output.summary}) > {log} 2>&1"


rule retrain_derived:
    """The search's derived cell trained stand-alone on the reference task with the `train` section."""
    input:
        tracking=ancient(TRACKING),
        topk=run_dir("dsearch", "{method}", "topk.json"),
    output:
        results=run_dir("dretrain", "{method}", "results.csv"),
        summary=run_dir("dretrain", "{method}", "summary.json"),
    params:
        cmd=nas_command("train", "retrain_derived", task=REFERENCE),
        settings=settings("space", "dataset", "train"),
    threads: 1
    resources:
        gpu=1,
    log:
        run_dir("logs", "dretrain_{method}.log"),
    shell:
        "{params.cmd} threads={threads} --archs {input.topk} --top 1"
        " --out $(dirname {output.summary}) > {log} 2>&1"


rule collect_differentiable:
    input:
        searches=expand_grid(run_dir("dsearch", "{method}", "summary.json"), DIFF_TASKS, method=DIFF_METHODS),
        retrained=expand_grid(run_dir("dretrain", "{method}", "results.csv"), DIFF_TASKS, method=DIFF_METHODS)
        if RETRAIN_DERIVED
        else [],
    output:
        searches=f"{RESULTS}/tables/differentiable.csv",
        epochs=f"{RESULTS}/tables/differentiable_epochs.csv",
    params:
        cmd=f"{NAS} collect",
    log:
        f"{RESULTS}/logs/collect_differentiable.log",
    localrule: True
    shell:
        "({params.cmd} --kind differentiable --inputs {input.searches} {input.retrained} --out {output.searches}"
        " && {params.cmd} --kind differentiable_epochs --inputs {input.searches} --out {output.epochs}) > {log} 2>&1"


rule figures_differentiable:
    input:
        tracking=ancient(TRACKING),
        searches=f"{RESULTS}/tables/differentiable.csv",
        epochs=f"{RESULTS}/tables/differentiable_epochs.csv",
    output:
        summary=f"{RESULTS}/figures/differentiable/summary.json",
    params:
        cmd=nas_command("figures-differentiable", "figures_differentiable"),
        settings=settings("ground_truth"),
    localrule: True
    log:
        f"{RESULTS}/logs/figures_differentiable.log",
    shell:
        "{params.cmd} --table {input.searches} --epochs {input.epochs}"
        " --out $(dirname {output.summary}) > {log} 2>&1"
