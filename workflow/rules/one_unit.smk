# What one unit does: conv1 filters (Krizhevsky 2012), activation maps (Yosinski 2015), top
# images and deconvnet (Zeiler & Fergus 2014), backprop and guided backprop (Springenberg 2015),
# occlusion (Zeiler & Fergus 2014), activation maximisation (Erhan 2009; Yosinski 2015).
# One rule per experiment, built from its declaration (cvinterp.experiments.<name>).

if "filters" in EXPERIMENTS:

    rule filters:
        input:
            **experiment_inputs("filters"),
        output:
            **experiment_outputs("filters"),
        log:
            f"{RESULTS}/logs/filters.log",
        benchmark:
            f"{RESULTS}/benchmarks/filters.tsv"
        group:
            job_group("filters")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("filters")
        resources:
            **experiment_resources("filters"),
        params:
            **experiment_params("filters"),
        script:
            "../scripts/experiment.py"


if "activations" in EXPERIMENTS:

    rule activations:
        input:
            **experiment_inputs("activations"),
        output:
            **experiment_outputs("activations"),
        log:
            f"{RESULTS}/logs/activations.log",
        benchmark:
            f"{RESULTS}/benchmarks/activations.tsv"
        group:
            job_group("activations")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("activations")
        resources:
            **experiment_resources("activations"),
        params:
            **experiment_params("activations"),
        script:
            "../scripts/experiment.py"


if "top_images" in EXPERIMENTS:

    rule top_images:
        input:
            **experiment_inputs("top_images"),
        output:
            **experiment_outputs("top_images"),
        log:
            f"{RESULTS}/logs/top_images.log",
        benchmark:
            f"{RESULTS}/benchmarks/top_images.tsv"
        group:
            job_group("top_images")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("top_images")
        resources:
            **experiment_resources("top_images"),
        params:
            **experiment_params("top_images"),
        script:
            "../scripts/experiment.py"


if "deconvnet" in EXPERIMENTS:

    rule deconvnet:
        input:
            **experiment_inputs("deconvnet"),
        output:
            **experiment_outputs("deconvnet"),
        log:
            f"{RESULTS}/logs/deconvnet.log",
        benchmark:
            f"{RESULTS}/benchmarks/deconvnet.tsv"
        group:
            job_group("deconvnet")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("deconvnet")
        resources:
            **experiment_resources("deconvnet"),
        params:
            **experiment_params("deconvnet"),
        script:
            "../scripts/experiment.py"


if "guided_backprop" in EXPERIMENTS:

    rule guided_backprop:
        input:
            **experiment_inputs("guided_backprop"),
        output:
            **experiment_outputs("guided_backprop"),
        log:
            f"{RESULTS}/logs/guided_backprop.log",
        benchmark:
            f"{RESULTS}/benchmarks/guided_backprop.tsv"
        group:
            job_group("guided_backprop")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("guided_backprop")
        resources:
            **experiment_resources("guided_backprop"),
        params:
            **experiment_params("guided_backprop"),
        script:
            "../scripts/experiment.py"


if "backprop" in EXPERIMENTS:

    rule backprop:
        input:
            **experiment_inputs("backprop"),
        output:
            **experiment_outputs("backprop"),
        log:
            f"{RESULTS}/logs/backprop.log",
        benchmark:
            f"{RESULTS}/benchmarks/backprop.tsv"
        group:
            job_group("backprop")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("backprop")
        resources:
            **experiment_resources("backprop"),
        params:
            **experiment_params("backprop"),
        script:
            "../scripts/experiment.py"


if "occlusion" in EXPERIMENTS:

    rule occlusion:
        input:
            **experiment_inputs("occlusion"),
        output:
            **experiment_outputs("occlusion"),
        log:
            f"{RESULTS}/logs/occlusion.log",
        benchmark:
            f"{RESULTS}/benchmarks/occlusion.tsv"
        group:
            job_group("occlusion")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("occlusion")
        resources:
            **experiment_resources("occlusion"),
        params:
            **experiment_params("occlusion"),
        script:
            "../scripts/experiment.py"


if "actmax" in EXPERIMENTS:

    rule actmax:
        input:
            **experiment_inputs("actmax"),
        output:
            **experiment_outputs("actmax"),
        log:
            f"{RESULTS}/logs/actmax.log",
        benchmark:
            f"{RESULTS}/benchmarks/actmax.tsv"
        group:
            job_group("actmax")
        conda:
            "../envs/cvinterp.yaml"
        threads: experiment_threads("actmax")
        resources:
            **experiment_resources("actmax"),
        params:
            **experiment_params("actmax"),
        script:
            "../scripts/experiment.py"
