# How units matter for the prediction: unit ablation (Zhou 2018), and context ablation on an
# LSTM language model (Khandelwal 2018).
# One rule per experiment, built from its declaration (cvinterp.experiments.<name>).

if "ablation" in EXPERIMENTS:

    rule ablation:
        input:
            **experiment_inputs("ablation"),
        output:
            **experiment_outputs("ablation"),
        log:
            f"{RESULTS}/logs/ablation.log",
        benchmark:
            f"{RESULTS}/benchmarks/ablation.tsv"
        group:
            job_group("ablation")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("ablation")
        resources:
            **experiment_resources("ablation"),
        params:
            **experiment_params("ablation"),
        script:
            "../scripts/experiment.py"


if "lm_context" in EXPERIMENTS:

    rule lm_context:
        input:
            **experiment_inputs("lm_context"),
        output:
            **experiment_outputs("lm_context"),
        log:
            f"{RESULTS}/logs/lm_context.log",
        benchmark:
            f"{RESULTS}/benchmarks/lm_context.tsv"
        group:
            job_group("lm_context")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("lm_context")
        resources:
            **experiment_resources("lm_context"),
        params:
            **experiment_params("lm_context"),
        script:
            "../scripts/experiment.py"
