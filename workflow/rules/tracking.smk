# The tracking store, the study's experiment and its parent run are created once, before any job:
# concurrent first use of a fresh MLflow store crashes.


rule tracking_init:
    output:
        TRACKING,
    params:
        cmd=f"{NAS} tracking-init --config {CONFIG_FILE}",
    log:
        f"{RESULTS}/logs/tracking_init.log",
    localrule: True
    shell:
        "{params.cmd} --out {output} > {log} 2>&1"
