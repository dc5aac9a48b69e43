# What all units do: t-SNE and PCA of features and the top images of every unit (van der
# Maaten & Hinton 2008), feature inversion with a deep image prior (Ulyanov 2018) and with
# learned inverters (Dosovitskiy & Brox 2016), Network Dissection (Bau 2017).
# One rule per experiment, built from its declaration (cvinterp.experiments.<name>).

if "embedding" in EXPERIMENTS:

    rule embedding:
        input:
            **experiment_inputs("embedding"),
        output:
            **experiment_outputs("embedding"),
        log:
            f"{RESULTS}/logs/embedding.log",
        benchmark:
            f"{RESULTS}/benchmarks/embedding.tsv"
        group:
            job_group("embedding")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("embedding")
        resources:
            **experiment_resources("embedding"),
        params:
            **experiment_params("embedding"),
        script:
            "../scripts/experiment.py"


if "inversion_dip" in EXPERIMENTS:

    rule inversion_dip:
        input:
            **experiment_inputs("inversion_dip"),
        output:
            **experiment_outputs("inversion_dip"),
        log:
            f"{RESULTS}/logs/inversion_dip.log",
        benchmark:
            f"{RESULTS}/benchmarks/inversion_dip.tsv"
        group:
            job_group("inversion_dip")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("inversion_dip")
        resources:
            **experiment_resources("inversion_dip"),
        params:
            **experiment_params("inversion_dip"),
        script:
            "../scripts/experiment.py"


if "inversion_learned" in EXPERIMENTS:

    rule inversion_learned:
        input:
            **experiment_inputs("inversion_learned"),
        output:
            **experiment_outputs("inversion_learned"),
        log:
            f"{RESULTS}/logs/inversion_learned.log",
        benchmark:
            f"{RESULTS}/benchmarks/inversion_learned.tsv"
        group:
            job_group("inversion_learned")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("inversion_learned")
        resources:
            **experiment_resources("inversion_learned"),
        params:
            **experiment_params("inversion_learned"),
        script:
            "../scripts/experiment.py"


if "dissection" in EXPERIMENTS:

    rule dissection:
        input:
            **experiment_inputs("dissection"),
        output:
            **experiment_outputs("dissection"),
        log:
            f"{RESULTS}/logs/dissection.log",
        benchmark:
            f"{RESULTS}/benchmarks/dissection.tsv"
        group:
            job_group("dissection")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("dissection")
        resources:
            **experiment_resources("dissection"),
        params:
            **experiment_params("dissection"),
        script:
            "../scripts/experiment.py"
