# What one unit does: activations, top_images, deconvnet, guided_backprop, backprop, occlusion
# (cvinterp.unit_experiments); what all units do: actmax, embedding, inversion_dip,
# inversion_learned (cvinterp.all_unit_experiments); how units matter: ablation
# (cvinterp.importance_experiments). One rule per experiment in the config;
# each calls <module>.<name>_experiment.


for _unit in UNIT_EXPERIMENTS:

    rule:
        name:
            _unit
        input:
            **unit_inputs(_unit),
        output:
            **unit_figures(_unit),
            metrics=f"{RESULTS}/metrics/{_unit}.json",
        log:
            f"{RESULTS}/logs/{_unit}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{_unit}.tsv"
        group:
            job_group(_unit)
        conda:
            "../envs/cvinterp.yaml"
        threads: config["threads"]
        resources:
            mem_mb=memory(4000, paper=16000),
            runtime=minutes(60, paper=360),
            gpu=GPU,
        params:
            models=unit_models(_unit),
            settings=unit_settings(_unit),
            fashion_dir=fashion_dir_of,
            cifar_dir=cifar_dir_of,
        script:
            "../scripts/unit_experiment.py"
