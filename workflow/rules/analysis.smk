# Tidy tables -> correlations -> figures. Each reads only the files the stages wrote.


rule collect_standalone:
    input:
        expand_grid(run_dir("train", "shard{shard}", "results.csv"), TASKS, shard=range(NUM_SHARDS)),
    output:
        f"{RESULTS}/tables/standalone.csv",
    params:
        cmd=f"{NAS} collect --kind standalone",
    log:
        f"{RESULTS}/logs/collect_standalone.log",
    localrule: True
    shell:
        "{params.cmd} --inputs {input} --out {output} > {log} 2>&1"


rule collect_proxies:
    input:
        expand_grid(run_dir("score", "shard{shard}", "scores.csv"), SUPERNET_TASKS, shard=range(NUM_SCORE_SHARDS)),
    output:
        f"{RESULTS}/tables/proxies.csv",
    params:
        cmd=f"{NAS} collect --kind proxies",
    log:
        f"{RESULTS}/logs/collect_proxies.log",
    localrule: True
    shell:
        "{params.cmd} --inputs {input} --out {output} > {log} 2>&1"


rule collect_search:
    input:
        expand_grid(run_dir("retrain", "{fitness}", "results.csv"), SUPERNET_TASKS, fitness=FITNESSES),
    output:
        f"{RESULTS}/tables/search.csv",
    params:
        cmd=f"{NAS} collect --kind search",
    log:
        f"{RESULTS}/logs/collect_search.log",
    localrule: True
    shell:
        "{params.cmd} --inputs {input} --out {output} > {log} 2>&1"


rule correlate:
    input:
        tracking=ancient(TRACKING),
        standalone=f"{RESULTS}/tables/standalone.csv",
        proxies=f"{RESULTS}/tables/proxies.csv" if SUPERNET_TASKS else [],
        zero_cost=f"{RESULTS}/tables/zero_cost.csv" if ZERO_COST else [],
    output:
        correlations=f"{RESULTS}/correlations/correlations.csv",
        summary=f"{RESULTS}/correlations/summary.json",
    params:
        cmd=nas_command("correlate", "correlate"),
        settings=settings("study"),
        tables=lambda w, input: " ".join(
            f"--{name.replace('_', '-')} {getattr(input, name)}" for name in ("proxies", "zero_cost") if getattr(input, name)
        ),
    localrule: True
    log:
        f"{RESULTS}/logs/correlate.log",
    shell:
        "{params.cmd} --standalone {input.standalone} {params.tables}"
        " --out $(dirname {output.summary}) > {log} 2>&1"


rule figures:
    input:
        tracking=ancient(TRACKING),
        correlations=f"{RESULTS}/correlations/summary.json",
        search=f"{RESULTS}/tables/search.csv" if SUPERNET_TASKS else [],
    output:
        summary=f"{RESULTS}/figures/summary.json",
    params:
        cmd=nas_command("figures", "figures"),
        search=lambda w, input: f"--search {input.search}" if SUPERNET_TASKS else "",
    localrule: True
    log:
        f"{RESULTS}/logs/figures.log",
    shell:
        "{params.cmd} --correlations $(dirname {input.correlations}) {params.search}"
        " --out $(dirname {output.summary}) > {log} 2>&1"
