# Tidy tables -> correlations -> figures. Each reads only the files the stages wrote.


rule collect_standalone:
    input:
        expand_grid(run_dir("train", "shard{shard}", "results.csv"), TASKS, shard=range(NUM_SHARDS)),
    output:
        f"{RESULTS}/tables/standalone.csv",
    localrule: True
    shell:
        "{NAS} collect --kind standalone --inputs {input} --out {output}"


rule collect_proxies:
    input:
        expand_grid(run_dir("score", "scores.csv"), SUPERNET_TASKS),
    output:
        f"{RESULTS}/tables/proxies.csv",
    localrule: True
    shell:
        "{NAS} collect --kind proxies --inputs {input} --out {output}"


rule collect_search:
    input:
        expand_grid(run_dir("retrain", "{fitness}", "results.csv"), SUPERNET_TASKS, fitness=FITNESSES),
    output:
        f"{RESULTS}/tables/search.csv",
    localrule: True
    shell:
        "{NAS} collect --kind search --inputs {input} --out {output}"


rule correlate:
    input:
        tracking=ancient(TRACKING),
        standalone=f"{RESULTS}/tables/standalone.csv",
        proxies=f"{RESULTS}/tables/proxies.csv" if SUPERNET_TASKS else [],
    output:
        correlations=f"{RESULTS}/correlations/correlations.csv",
        summary=f"{RESULTS}/correlations/summary.json",
    params:
        nas=nas_args("correlate"),
        settings=settings("study"),
        proxies=lambda w, input: f"--proxies {input.proxies}" if SUPERNET_TASKS else "",
    localrule: True
    log:
        f"{RESULTS}/logs/correlate.log",
    shell:
        "{NAS} correlate {params.nas} --standalone {input.standalone} {params.proxies}"
        " --out $(dirname {output.summary}) > {log} 2>&1"


rule figures:
    input:
        tracking=ancient(TRACKING),
        correlations=f"{RESULTS}/correlations/summary.json",
        search=f"{RESULTS}/tables/search.csv" if SUPERNET_TASKS else [],
    output:
        summary=f"{RESULTS}/figures/summary.json",
    params:
        nas=nas_args("figures"),
        search=lambda w, input: f"--search {input.search}" if SUPERNET_TASKS else "",
    localrule: True
    log:
        f"{RESULTS}/logs/figures.log",
    shell:
        "{NAS} figures {params.nas} --correlations $(dirname {input.correlations}) {params.search}"
        " --out $(dirname {output.summary}) > {log} 2>&1"
