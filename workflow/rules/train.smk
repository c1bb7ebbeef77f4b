# Stage 2: one job per run = model x dataset x normal class x seed (`grad2vae train`).
# 800 jobs with config.yaml, 1200 with presets/table1-complete.yaml (extra_models). `--resources gpu=N` caps how many train at once.


rule train:
    input:
        train_data,
    output:
        metrics=f"{RESULTS}/{RUN_DIR}/metrics.json",
        history=f"{RESULTS}/{RUN_DIR}/history.tsv",
        scores=f"{RESULTS}/{RUN_DIR}/scores.csv.gz",
        model=f"{RESULTS}/{RUN_DIR}/model.pt",
    log:
        f"{RESULTS}/{TRAIN_LOG}",
    benchmark:
        f"{RESULTS}/{TRAIN_BENCHMARK}"
    conda:
        "../../envs/grad2vae.yaml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        mem_mb=config["resources"]["train"]["mem_mb"],
        runtime=config["resources"]["train"]["runtime"],
    params:
        data_dir=DATA_DIR,
        run_dir=lambda wildcards, output: os.path.dirname(output.metrics),
        latent_dim=latent_dim,
        protocol=train_options,
        execution=execution_options,
    shell:
        "grad2vae train --model {wildcards.model} --dataset {wildcards.dataset}"
        " --normal-class {wildcards.normal_class} --seed {wildcards.seed}"
        " --data-dir {params.data_dir} --out-dir {params.run_dir}"
        " --latent-dim {params.latent_dim} {params.protocol} {params.execution}"
        " --no-progress > {log} 2>&1"
