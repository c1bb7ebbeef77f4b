# Stage 3: the tidy table of all runs, per-class statistics, mstd, Table 1, the tests of
# stats.json, the verdicts on the paper's claims (claims.json) and the AUC under every score
# beside the model-free entropy-only AUC (`grad2vae entropy`, then `grad2vae aggregate`), then the figures
# (`grad2vae figures`), among them the critical-difference diagram of each dataset.


rule workflow_config:
    output:
        f"{AGGREGATE_DIR}/workflow_config.json",
    log:
        f"{RESULTS}/logs/workflow_config.log",
    params:
        # the validated configuration with its defaults; a change re-runs the rules below
        text=config_json(),
    run:
        from grad2vae.atomic import write_json, write_text

        write_json(output[0], json.loads(params.text))
        write_text(log[0], f"wrote {output[0]}\n")


rule entropy_only:
    input:
        # the test images (ancient: a refetch changes nothing)
        data=[ancient(path) for d in config["datasets"] for path in dataset_files(d)],
    output:
        f"{AGGREGATE_DIR}/{ENTROPY_TABLE}",
    log:
        f"{RESULTS}/logs/entropy_only.log",
    conda:
        "../../envs/grad2vae.yaml"
    params:
        data_dir=lambda wildcards, input: up(input.data[0], 2),
        datasets=" ".join(config["datasets"]),
        normal_classes=" ".join(str(c) for c in config["normal_classes"]),
        # the runs' test images: the same stratified subset
        test_limit=config["train"]["test_limit"],
    shell:
        "grad2vae entropy --data-dir {params.data_dir} --datasets {params.datasets}"
        " --normal-classes {params.normal_classes} --test-limit {params.test_limit}"
        " --out {output} > {log} 2>&1"


rule aggregate:
    input:
        runs=aggregate_runs,
        config=rules.workflow_config.output,
        entropy=rules.entropy_only.output,
    output:
        [f"{AGGREGATE_DIR}/{name}" for name in AGGREGATE_FILES if name != ENTROPY_TABLE],
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../../envs/grad2vae.yaml"
    params:
        results_dir=lambda wildcards, output: up(output[0], 2),
        out_dir=lambda wildcards, output: up(output[0]),
    shell:
        "grad2vae aggregate --results-dir {params.results_dir}"
        " --workflow-config {input.config} --out-dir {params.out_dir}"
        " --entropy-table {input.entropy} --release-checkpoints > {log} 2>&1"


rule figures:
    input:
        rules.aggregate.output,
        rules.entropy_only.output,
        roc_scores,
    output:
        figure_files(),
        roc_figure(),
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        "../../envs/grad2vae.yaml"
    params:
        results_dir=lambda wildcards, output: up(output[0], 2),
        aggregate_dir=lambda wildcards, input: up(input[0]),
        out_dir=lambda wildcards, output: up(output[0]),
        roc_class=config["figures"]["roc_class"],
        fig6_epochs=config["figures"]["fig6_epochs"],
        dpi=config["figures"]["dpi"],
    shell:
        "grad2vae figures --results-dir {params.results_dir}"
        " --aggregate-dir {params.aggregate_dir} --out-dir {params.out_dir}"
        " --roc-class {params.roc_class} --fig6-epochs {params.fig6_epochs}"
        " --dpi {params.dpi} > {log} 2>&1"
