# Models: classifiers trained, imported or initialised (rule model), and word-level language
# models trained (rule language_model); both resume an interrupted training.


rule model:
    input:
        model_inputs,
    output:
        checkpoint=f"{RESULTS}/models/{{model}}.pt",
        metrics=f"{RESULTS}/metrics/models/{{model}}.json",
    log:
        f"{RESULTS}/logs/models/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/models/{{model}}.tsv"
    conda:
        "../envs/cvinterp.yaml"
    threads: config["threads"]
    resources:
        mem_mb=memory(4000, paper=16000),
        runtime=minutes(120, paper=720),
        gpu=GPU,
    params:
        spec=model_spec,
        partial=f"{RESULTS}/models/partial/{{model}}.pt",
        fashion_dir=f"{RESOURCES}/fashion-mnist",
        cifar_dir=f"{RESOURCES}/cifar10",
        hub_dir=f"{RESOURCES}/torch-hub",
    script:
        "../scripts/model.py"


if LANGUAGE_MODELS:

    rule language_model:
        input:
            lm_corpus_inputs,
        output:
            checkpoint=f"{RESULTS}/models/{{lm}}.pt",
            metrics=f"{RESULTS}/metrics/models/{{lm}}.json",
        log:
            f"{RESULTS}/logs/models/{{lm}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/models/{{lm}}.tsv"
        conda:
            "../envs/cvinterp.yaml"
        threads: config["threads"]
        resources:
            mem_mb=memory(4000, paper=16000),
            runtime=minutes(60, paper=1440),
            gpu=GPU,
        params:
            spec=lm_spec,
            partial=f"{RESULTS}/models/partial/{{lm}}.pt",
            corpus_dir=lm_corpus_dir,
            austen_dir=lm_austen_dir,
        script:
            "../scripts/language_model.py"
