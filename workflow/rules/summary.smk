rule compare:
    input:
        **experiment_metrics(),
        claims=CLAIMS,
    output:
        report(
            f"{RESULTS}/compare.tsv",
            caption="../report/compare.rst",
            category="Comparison with the papers",
            labels={"table": "paper says / we measured / verdict"},
        ),
        html=report(
            f"{RESULTS}/compare.html",
            caption="../report/compare.rst",
            category="Comparison with the papers",
            labels={"table": "the same, verdicts coloured"},
        ),
    log:
        f"{RESULTS}/logs/compare.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare.tsv"
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        experiments=EXPERIMENTS,
        left_out=LEFT_OUT_REASONS,
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
    conda:
        "../envs/cvinterp.yaml"
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
    localrule: True
    conda:
        "../envs/cvinterp.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        version=VERSION,
        start_file=START_FILE,
    script:
        "../scripts/provenance.py"
