# Stage 4: report/index.html with its assets beside it (`grad2vae report`). Opens from file://.


rule assumptions:
    input:
        # the modules that state them: a changed assumption writes the file again
        source_files(),
    output:
        f"{RESULTS}/{ASSUMPTIONS_FILE}",
    log:
        f"{RESULTS}/logs/assumptions.log",
    conda:
        "../../envs/grad2vae.yaml"
    shell:
        "grad2vae assumptions --out {output} > {log} 2>&1"


rule report:
    input:
        rules.aggregate.output,
        rules.entropy_only.output,
        rules.figures.output,
        explain_inputs,
        assumptions=rules.assumptions.output,
        template=f"{TEMPLATE_DIR}/index.html.j2",
        stylesheet=f"{TEMPLATE_DIR}/style.css",
        captions=caption_files(),
    output:
        REPORT_HTML,
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../../envs/grad2vae.yaml"
    params:
        results_dir=lambda wildcards, input: up(input[0], 2),
        report_dir=lambda wildcards, output: up(output[0]),
        template_dir=lambda wildcards, input: up(input.template),
        explain_summary=EXPLAIN_SUMMARY,
        title=config["report"]["title"],
    shell:
        "grad2vae report --results-dir {params.results_dir}"
        " --report-dir {params.report_dir} --template-dir {params.template_dir}"
        " --explain-summary {params.explain_summary} --assumptions {input.assumptions}"
        " --title {params.title:q} > {log} 2>&1"
