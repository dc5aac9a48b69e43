# What units detect: Network Dissection (Bau et al. 2017) on a probe set in the Broden layout,
# the offline stand-in (concept_probe) or the real Broden (get_broden).


rule get_gimp_patterns:
    output:
        f"{RESOURCES}/gimp-patterns/tiles.sha256",
    log:
        f"{RESOURCES}/logs/get_gimp_patterns.log",
    benchmark:
        f"{RESOURCES}/benchmarks/get_gimp_patterns.tsv"
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=10,
    params:
        workdir=f"{RESOURCES}/packages",
    script:
        "../scripts/get_gimp_patterns.py"


rule concept_probe:
    input:
        tiles=f"{RESOURCES}/gimp-patterns/tiles.sha256",
        fashion=fashion_mnist_files(),
    output:
        f"{concept_probe_dir()}/index.csv",
    log:
        f"{RESOURCES}/logs/concept_probe.log",
    benchmark:
        f"{RESOURCES}/benchmarks/concept_probe.tsv"
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=memory(1000),
        runtime=30,
    params:
        images=config["datasets"]["concept_probe"]["images"],
        size=config["datasets"]["concept_probe"]["size"],
        seed=config["seed"],
    script:
        "../scripts/concept_probe.py"


rule get_broden:
    input:
        f"{RESOURCES}/downloads/broden1_{{variant}}.zip",
    output:
        f"{RESOURCES}/broden1_{{variant}}/index.csv",
    log:
        f"{RESOURCES}/logs/get_broden1_{{variant}}.log",
    benchmark:
        f"{RESOURCES}/benchmarks/get_broden1_{{variant}}.tsv"
    wildcard_constraints:
        variant="224|227",
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        dest=unpack_destination,
    script:
        "../scripts/unpack.py"


if "dissection" in config["experiments"]:

    rule dissection:
        input:
            checkpoints=[f"{RESULTS}/models/{m}.pt" for m in dissection_models()],
            probes=sorted({f"{d}/index.csv" for d in dissection_probe_dirs().values()}),
            released="config/netdissect/released.yaml",
        output:
            **dissection_figures(),
            tables=dissection_tables(),
            metrics=f"{RESULTS}/metrics/dissection.json",
        log:
            f"{RESULTS}/logs/dissection.log",
        benchmark:
            f"{RESULTS}/benchmarks/dissection.tsv"
        conda:
            "../envs/cvinterp.yaml"
        threads: config["threads"]
        resources:
            mem_mb=memory(4000, paper=16000),
            runtime=minutes(60, paper=360),
            gpu=GPU,
        params:
            models=dissection_models(),
            probe_dirs=dissection_probe_dirs(),
            settings=config["experiments"].get("dissection"),
        script:
            "../scripts/dissection.py"
