"""Grad2VAE benchmark: data -> 800 training runs -> aggregate (Table 1) -> figures -> report.

Run from the repository root:
    snakemake --cores 2 --configfile presets/quick.yaml   # CPU smoke run, < 10 min
                                                          #   -> report/index.html
    snakemake --cores 8 --resources gpu=2                 # the paper's grid (config.yaml)
                                                          #   -> report/index.html
    snakemake --profile profiles/slurm                    # the same on a Slurm cluster
    snakemake -n                                          # dry run: 800 training jobs
    snakemake --cores 8 --resources gpu=2 --configfile presets/table1-complete.yaml
                                     # + Deep SVDD and CAE OC-SVM (Table 1 complete): 1200 jobs
    snakemake data                                        # only fetch and verify the data

A report of a partial grid: Snakemake does not run the report while any run it needs failed, so
first train what can be trained, then report on what exists without waiting for the rest:
    snakemake --cores 8 --resources gpu=2 --keep-going
    snakemake --cores 1 --config allow_partial=True
The report's "Run status" section lists the missing and failed runs (with the error line of
each failed run's log); running the first command again retries them.

Stages, one rule file each under workflow/rules/: data.smk, train.smk, aggregate.smk (also the
figures), explain.smk (attention figures, faithfulness), report.smk; common.smk holds the paths and helpers. Configuration: config.yaml,
checked against workflow/schemas/config.schema.yaml.
"""

import os

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


# Fills defaults and rejects unknown keys and bad values before any job runs; the error names
# each offending key as a dotted path (e.g. "train: ... ('epoch' was unexpected)").
CONFIG_SCHEMA = os.path.join(
    workflow.basedir, "workflow", "schemas", "config.schema.yaml"
)
try:
    validate(config, CONFIG_SCHEMA)
except WorkflowError:
    with open(CONFIG_SCHEMA, encoding="utf-8") as schema_file:
        config_validator = jsonschema.Draft202012Validator(yaml.safe_load(schema_file))
    raise WorkflowError(
        "invalid configuration (see workflow/schemas/config.schema.yaml):\n"
        + "\n".join(
            f"  {'.'.join(map(str, problem.absolute_path)) or '(top level)'}: {problem.message}"
            for problem in config_validator.iter_errors(config)
        )
    ) from None


include: "workflow/rules/common.smk"


# `snakemake --report report.zip`: this text, then every figure marked with report() and its
# caption from src/grad2vae/report/templates/captions (the captions `grad2vae report` shows too)
report: "workflow/report/workflow.rst"


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    model="|".join(MODELS),
    normal_class=r"\d+",
    seed=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    data,
    workflow_config,
    entropy_only,
    aggregate,
    assumptions,
    figures,
    report,


rule all:
    default_target: True
    input:
        REPORT_HTML,
        # The runs' outputs too: Snakemake does not rerun anything for a deleted intermediate
        # file while the report is newer, so a deleted metrics.json would go unnoticed. As a
        # target it is made again (a rerun re-evaluates from the final checkpoint, or trains),
        # and the aggregation, figures and report follow. Not with allow_partial.
        expected_run_outputs(),
