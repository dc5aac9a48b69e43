rule get_fashion_mnist:
    output:
        fashion_mnist_files(),
    log:
        f"{RESOURCES}/logs/get_fashion_mnist.log",
    benchmark:
        f"{RESOURCES}/benchmarks/get_fashion_mnist.tsv"
    params:
        source_dir=config["datasets"]["fashion_mnist"]["dir"],
        allow_download=config["datasets"]["fashion_mnist"]["download"],
        workdir=f"{RESOURCES}/packages",
    localrule: True
    resources:
        mem_mb=500,
        runtime=10,
    script:
        "../scripts/get_fashion_mnist.py"
