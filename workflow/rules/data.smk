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
