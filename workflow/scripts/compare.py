from cvinterp.compare import build_table, write_html, write_table
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    metrics = {e: snakemake.input[e] for e in snakemake.params.experiments}
    rows = build_table(snakemake.input.claims, metrics, left_out=snakemake.params.left_out)
    write_table(rows, snakemake.output[0])
    write_html(rows, snakemake.output.html)
    for r in rows:
        print(f"{r['verdict']:12s} {r['experiment']}: {r['claim']}")
