def experiment_metrics():
    return {e: f"{RESULTS}/metrics/{e}.json" for e in EXPERIMENTS}


rule compare:
    input:
        claims=CLAIMS,
        **experiment_metrics(),
    output:
        report(
            f"{RESULTS}/compare.tsv",
            caption="../report/compare.rst",
            category="Comparison with the papers",
            labels={"table": "paper says / we measured / verdict"},
        ),
    log:
        f"{RESULTS}/logs/compare.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare.tsv"
    params:
        experiments=EXPERIMENTS,
    localrule: True
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/compare.py"


rule bibliography:
    input:
        "workflow/report/references.bib",
    output:
        report(
            f"{RESULTS}/references.bib",
            caption="../report/references.rst",
            category="References",
            labels={"file": "BibTeX of every paper"},
        ),
    log:
        f"{RESULTS}/logs/bibliography.log",
    benchmark:
        f"{RESULTS}/benchmarks/bibliography.tsv"
    localrule: True
    resources:
        mem_mb=100,
        runtime=1,
    shell:
        "cp {input} {output} 2> {log}"


rule provenance:
    input:
        [o for o in final_outputs() if not o.endswith("provenance.json")],
    output:
        f"{RESULTS}/provenance.json",
    log:
        f"{RESULTS}/logs/provenance.log",
    benchmark:
        f"{RESULTS}/benchmarks/provenance.tsv"
    params:
        version=VERSION,
        start_file=START_FILE,
    localrule: True
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/provenance.py"
