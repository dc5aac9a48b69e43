"""python -m cvinterp.rehearsal --size tiny|full --workdir DIR [-- extra Snakemake arguments]

Writes the synthetic data into DIR (reused when present), serves it over a local HTTP server,
writes DIR/config.yaml (the paper profile with the rehearsal's caps) and runs Snakemake on it
in DIR; `--table` then writes DIR/results/rehearsal-<size>/rehearsal.md from the jobs'
benchmark files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvinterp.rehearsal.compose import rehearse


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m cvinterp.rehearsal", description=__doc__)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--cores", default="all", help="Snakemake's --cores (default: all)")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes writing the synthetic data"
    )
    parser.add_argument(
        "--table", action="store_true", help="write the per-job table after the run"
    )
    args = parser.parse_args(argv)
    rc = rehearse(args.size, args.workdir, extra, cores=args.cores, workers=args.workers)
    if args.table:
        from cvinterp.rehearsal.table import write_table

        out = write_table(args.workdir.resolve(), args.size)
        print(f"rehearsal: per-job table in {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
