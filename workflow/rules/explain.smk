# Stage 3b: the explainability section (`grad2vae explain`): Figs. 3-5 analogues, deletion
# curves and the faithfulness table, from the saved weights of the grad2vae and vae runs of the
# configured targets (nothing is retrained). The report shows them via EXPLAIN_SUMMARY.
# Its helper functions live in common.smk (snakemake --lint: rules and functions apart).


if EXPLAIN_DATASETS:

    rule explain:
        input:
            runs=explain_runs(),
            data=[ancient(path) for d in EXPLAIN_DATASETS for path in dataset_files(d)],
        output:
            summary=EXPLAIN_SUMMARY,
            tables=explain_tables(),
            figures=explain_figures(),
        log:
            f"{RESULTS}/logs/explain.log",
        benchmark:
            f"{RESULTS}/benchmarks/explain.tsv"
        conda:
            "../../envs/grad2vae.yaml"
        threads: config["resources"]["explain"]["threads"]
        resources:
            gpu=config["resources"]["explain"]["gpu"],
            mem_mb=config["resources"]["explain"]["mem_mb"],
            runtime=config["resources"]["explain"]["runtime"],
        params:
            results_dir=lambda wildcards, output: up(output.summary, 2),
            data_dir=lambda wildcards, input: up(input.data[0], 2),
            out_dir=lambda wildcards, output: up(output.summary),
            datasets=" ".join(EXPLAIN_DATASETS),
            classes=" ".join(str(c) for c in EXPLAIN_CLASSES),
            options=explain_options(),
        shell:
            "grad2vae explain --results-dir {params.results_dir}"
            " --data-dir {params.data_dir} --out-dir {params.out_dir}"
            " --datasets {params.datasets} --normal-classes {params.classes}"
            " {params.options} --threads {threads} > {log} 2>&1"
