# How an LSTM language model uses context (Khandelwal et al. 2018): the corpora (the offline
# prose, or PTB / WikiText-2 downloads), the language models, and the lm_context experiment.


rule get_austen:
    output:
        austen_files(),
    log:
        f"{RESOURCES}/logs/get_austen.log",
    benchmark:
        f"{RESOURCES}/benchmarks/get_austen.tsv"
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=10,
    params:
        workdir=f"{RESOURCES}/packages",
    script:
        "../scripts/get_austen.py"


rule get_wikitext2:
    input:
        f"{RESOURCES}/downloads/wikitext-2-v1.zip",
    output:
        wikitext2_files(),
    log:
        f"{RESOURCES}/logs/get_wikitext2.log",
    benchmark:
        f"{RESOURCES}/benchmarks/get_wikitext2.tsv"
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=10,
    params:
        dest=unpack_destination,
    script:
        "../scripts/unpack.py"


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


if "lm_context" in config["experiments"]:

    rule lm_context:
        input:
            checkpoints=[f"{RESULTS}/models/{m}.pt" for m in lm_context_models()],
            trained=[f"{RESULTS}/metrics/models/{m}.json" for m in lm_context_models()],
            corpora=sorted(
                {f for m in lm_context_models() for f in lm_corpus_inputs(m)}
            ),
        output:
            **lm_context_figures(),
            metrics=f"{RESULTS}/metrics/lm_context.json",
        log:
            f"{RESULTS}/logs/lm_context.log",
        benchmark:
            f"{RESULTS}/benchmarks/lm_context.tsv"
        conda:
            "../envs/cvinterp.yaml"
        threads: config["threads"]
        resources:
            mem_mb=memory(4000, paper=16000),
            runtime=minutes(60, paper=120),
            gpu=GPU,
        params:
            models=lm_context_models(),
            corpus_dirs={m: lm_corpus_dir(m) for m in lm_context_models()},
            austen_dirs={m: lm_austen_dir(m) for m in lm_context_models()},
            settings={
                k: v
                for k, v in config["experiments"].get("lm_context", {}).items()
                if k != "models"
            },
        script:
            "../scripts/lm_context.py"
