# Data: downloads (checked against pinned checksums), unpacked archives and packages, the
# offline concept probe. Downloads and unpacking are local rules: compute nodes are often offline.


rule get_fashion_mnist:
    output:
        fashion_mnist_files(),
    log:
        f"{RESOURCES}/logs/get_fashion_mnist.log",
    benchmark:
        f"{RESOURCES}/benchmarks/get_fashion_mnist.tsv"
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=10,
    params:
        source_dir=config["datasets"]["fashion_mnist"]["dir"],
        allow_download=config["datasets"]["fashion_mnist"]["download"],
        content_sha256=config["datasets"]["fashion_mnist"]["content_sha256"],
        downloads={
            n: config["downloads"][n]
            for pair in FASHION_FILES.values()
            for n in pair
            if n in config["downloads"]
        },
        workdir=f"{RESOURCES}/packages",
    script:
        "../scripts/get_fashion_mnist.py"


rule download:
    output:
        f"{RESOURCES}/downloads/{{name}}",
    log:
        f"{RESOURCES}/logs/download/{{name}}.log",
    benchmark:
        f"{RESOURCES}/benchmarks/download/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(re.escape(n) for n in DOWNLOADS),
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=60,
    params:
        # the config's `downloads` override of the pinned address and hash (a mirror, the
        # rehearsal's local server)
        source=lambda wildcards: config["downloads"].get(wildcards.name),
    script:
        "../scripts/download.py"


rule get_cifar10:
    input:
        f"{RESOURCES}/downloads/cifar-10-python.tar.gz",
    output:
        cifar10_files(),
    log:
        f"{RESOURCES}/logs/get_cifar10.log",
    benchmark:
        f"{RESOURCES}/benchmarks/get_cifar10.tsv"
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        dest=unpack_destination,
    script:
        "../scripts/unpack.py"


rule get_torchvision_weights:
    output:
        f"{RESOURCES}/torch-hub/checkpoints/{{file}}",
    log:
        f"{RESOURCES}/logs/torch-hub/{{file}}.log",
    benchmark:
        f"{RESOURCES}/benchmarks/torch-hub/{{file}}.tsv"
    wildcard_constraints:
        file="|".join(re.escape(n) for n in TORCHVISION_WEIGHTS) or "(?!)",
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=60,
    params:
        arch=lambda wildcards: TORCHVISION_WEIGHTS[wildcards.file],
        hub_dir=lambda wildcards, output: Path(output[0]).parents[1],
    script:
        "../scripts/get_torchvision_weights.py"


# The corpora of the language models (Khandelwal et al. 2018).
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


# Probe sets in the Broden layout for Network Dissection: the offline stand-in, or the real Broden.
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
