# Zero-cost proxies of the sampled architectures, the ground truth, and every proxy against it.


rule zero_cost_shard:
    input:
        tracking=ancient(TRACKING),
        archs=f"{RESULTS}/archs/{{space}}/archs.json",
    output:
        results=f"{RESULTS}/zero_cost/{{space}}/{{dataset}}/seed{{seed}}/shard{{shard}}/proxies.csv",
        summary=f"{RESULTS}/zero_cost/{{space}}/{{dataset}}/seed{{seed}}/shard{{shard}}/summary.json",
    params:
        cmd=nas_command("proxies", "zero_cost_shard"),
        settings=settings("space", "dataset", "proxies"),
        shards=NUM_PROXY_SHARDS,
    threads: 1
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/zero_cost/{{space}}/{{dataset}}/seed{{seed}}/shard{{shard}}.log",
    shell:
        "{params.cmd} threads={threads} --archs {input.archs} --shard {wildcards.shard}/{params.shards}"
        " --out $(dirname {output.summary}) > {log} 2>&1"


rule collect_zero_cost:
    input:
        expand(
            f"{RESULTS}/zero_cost/{{space}}/{{dataset}}/seed{{seed}}/shard{{shard}}/proxies.csv",
            space=SPACES, dataset=DATASETS, seed=SEEDS, shard=range(NUM_PROXY_SHARDS),
        ),
    output:
        f"{RESULTS}/tables/zero_cost.csv",
    params:
        cmd=f"{NAS} collect --kind zero_cost",
    log:
        f"{RESULTS}/logs/collect_zero_cost.log",
    localrule: True
    shell:
        "{params.cmd} --inputs {input} --out {output} > {log} 2>&1"


rule ground_truth:
    input:
        tracking=ancient(TRACKING),
    output:
        truth=f"{RESULTS}/groundtruth/truth/truth.csv",
        summary=f"{RESULTS}/groundtruth/truth/summary.json",
    params:
        cmd=nas_command("ground-truth", "ground_truth"),
        settings=settings("ground_truth", "space"),
    log:
        f"{RESULTS}/logs/ground_truth.log",
    localrule: True
    shell:
        "{params.cmd} --out $(dirname {output.summary}) > {log} 2>&1"


rule correlate_truth:
    input:
        tracking=ancient(TRACKING),
        truth=f"{RESULTS}/groundtruth/truth/summary.json",
        standalone=f"{RESULTS}/tables/standalone.csv" if TASKS else [],
        proxies=f"{RESULTS}/tables/proxies.csv" if SUPERNET_TASKS else [],
        zero_cost=f"{RESULTS}/tables/zero_cost.csv" if ZERO_COST else [],
        # the angle searches' picks are marked in the angle-vs-truth figure (RLNAS transfer_robustness)
        searches=expand_grid(run_dir("search", "angle", "summary.json"), SUPERNET_TASKS)
        if "angle" in FITNESSES
        else [],
    output:
        summary=f"{RESULTS}/groundtruth/correlations/summary.json",
    params:
        cmd=nas_command("correlate-truth", "correlate_truth"),
        settings=settings("study"),
        tables=lambda w, input: " ".join(
            f"--{name.replace('_', '-')} {getattr(input, name)}"
            for name in ("standalone", "proxies", "zero_cost")
            if getattr(input, name)
        ),
        searches=lambda w, input: (
            "--searches " + " ".join(os.path.dirname(p) for p in input.searches) if input.searches else ""
        ),
    log:
        f"{RESULTS}/logs/correlate_truth.log",
    localrule: True
    shell:
        "{params.cmd} --truth $(dirname {input.truth}) {params.tables} {params.searches}"
        " --out $(dirname {output.summary}) > {log} 2>&1"
