# Label-free NAS studies: supernet training -> search -> stand-alone training -> correlations -> figures.
# Run the default study:      snakemake --cores 2
# A study of your own:        snakemake all_figures --configfile configs/studies/<study>.yaml --cores 8 --resources gpu=8
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "configs/default.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


envvars:
    "MLFLOW_TRACKING_URI",


wildcard_constraints:
    seed=r"\d+",
    shard=r"\d+",
    fitness="angle|accuracy",
    space="[A-Za-z0-9_]+",
    dataset="[A-Za-z0-9_]+",
    task="[a-z]+",
    method="darts_v1|darts_v2|gdas|unas",


rule all_figures:
    """The default target: every figure of the study (and all it needs)."""
    input:
        final_targets(),
    default_target: True


include: "workflow/rules/tracking.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/supernet.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/groundtruth.smk"
include: "workflow/rules/differentiable.smk"
