# Stage 1: the verified MNIST / Fashion-MNIST IDX files (`grad2vae fetch`, SHA-256 checked).
# `snakemake data` fetches them alone; files already there and verified are left alone.


rule data:
    output:
        expand(
            "{data_dir}/{dataset}/{name}",
            data_dir=DATA_DIR,
            dataset=config["datasets"],
            name=IDX_NAMES + (MANIFEST_NAME,),
        ),
    log:
        f"{RESULTS}/logs/data.log",
    conda:
        "../../envs/grad2vae.yaml"
    params:
        data_dir=lambda wildcards, output: up(output[0], 2),
        # derived from `output` like `options`, so that a configuration with fewer datasets
        # (presets/score-study.yaml) does not re-fetch, which would plan nothing else that run
        datasets=lambda wildcards, output: " ".join(
            dict.fromkeys(os.path.basename(up(path)) for path in output)
        ),
        options=fetch_options,
    shell:
        "grad2vae fetch --data-dir {params.data_dir} --datasets {params.datasets}"
        " {params.options} > {log} 2>&1"
