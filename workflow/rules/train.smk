# Stage 2: training (`grad2vae train`). One job per run = model x dataset x normal class x seed:
# 800 jobs with config.yaml, 1200 with presets/table1-complete.yaml (extra_models). With
# train.seeds_per_job = k > 1, one job per k seeds of a (model, dataset, class) instead, trained in
# one process (160 jobs for k = 5). `--resources gpu=N` caps how many train at once.


# One process writes one log; every run of the job gets a copy (aggregate reads it per run).
TRAIN_SHELL = (
    "status=0; grad2vae train --model {wildcards.model} --dataset {wildcards.dataset}"
    " --normal-class {wildcards.normal_class} --seed {params.seeds}"
    " --data-dir {params.data_dir} --out-dir '{params.run_dir}'"
    " --latent-dim {params.latent_dim} {params.protocol} {params.execution}"
    " --no-progress > {log[0]} 2>&1 || status=$?;"
    " for run_log in {log}; do [ $run_log = {log[0]} ] || cp {log[0]} $run_log; done;"
    " exit $status"
)


if config["train"]["seeds_per_job"] == 1:

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
        threads: train_resource("threads")
        resources:
            gpu=train_resource("gpu"),
            mem_mb=train_resource("mem_mb"),
            runtime=train_resource("runtime"),
        params:
            data_dir=DATA_DIR,
            seeds=train_seeds,
            run_dir=train_run_dir,
            latent_dim=latent_dim,
            protocol=train_options,
            execution=execution_options,
        shell:
            TRAIN_SHELL

else:
    for seed_group in seed_groups():

        rule:
            name:
                "train_seeds_" + "_".join(map(str, seed_group))
            input:
                train_data,
            output:
                metrics=seed_group_paths(f"{RUN_DIR}/metrics.json", seed_group),
                history=seed_group_paths(f"{RUN_DIR}/history.tsv", seed_group),
                scores=seed_group_paths(f"{RUN_DIR}/scores.csv.gz", seed_group),
                model=seed_group_paths(f"{RUN_DIR}/model.pt", seed_group),
            log:
                seed_group_paths(TRAIN_LOG, seed_group),
            benchmark:
                seed_group_paths(
                    TRAIN_BENCHMARK, ["s" + "_".join(map(str, seed_group))]
                )[0]
            conda:
                "../../envs/grad2vae.yaml"
            threads: train_resource("threads")
            resources:
                gpu=train_resource("gpu"),
                mem_mb=train_resource("mem_mb", len(seed_group)),
                runtime=train_resource("runtime", len(seed_group)),
            params:
                data_dir=DATA_DIR,
                seeds=train_seeds,
                run_dir=train_run_dir,
                latent_dim=latent_dim,
                protocol=train_options,
                execution=execution_options,
            shell:
                TRAIN_SHELL
