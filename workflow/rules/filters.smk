FILTERS = config["experiments"].get("filters", {})


if FILTERS:

    rule filters:
        input:
            checkpoints=expand(f"{RESULTS}/models/{{m}}.pt", m=FILTERS["models"]),
        output:
            **{
                m: report(
                    f"{RESULTS}/figures/filters/{m}.png",
                    caption="../report/filters.rst",
                    category="filters",
                    labels={"figure": "conv1 kernels", "model": m},
                )
                for m in FILTERS["models"]
            },
            selectivity=report(
                f"{RESULTS}/figures/filters/colour_selectivity.png",
                caption="../report/filters_selectivity.rst",
                category="filters",
                labels={"figure": "colour selectivity", "model": "all colour models"},
            ),
            metrics=f"{RESULTS}/metrics/filters.json",
        log:
            f"{RESULTS}/logs/filters.log",
        benchmark:
            f"{RESULTS}/benchmarks/filters.tsv"
        group:
            job_group("filters")
        conda:
            "../envs/cvinterp.yaml"
        threads: 1
        resources:
            mem_mb=memory(2000),
            runtime=10,
        params:
            models=FILTERS["models"],
            colour_model=FILTERS["colour_model"],
        script:
            "../scripts/filters.py"
