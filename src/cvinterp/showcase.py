"""What a visitor sees before running anything: the comparison table and a handful of figures
of one real run, copied into `docs/` and the README by `make docs RESULTS=results/<version>`.

`refresh` reads a finished results folder (its compare.tsv, figures and provenance.json), writes
small PNGs under `docs/figures/`, `docs/compare.md`, and replaces the README's block between the
markers below with the table and the figures, naming the version, commit and date they came from.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

START = "<!-- showcase:start (make docs RESULTS=results/<version> rewrites this block) -->"
END = "<!-- showcase:end -->"

#: The figures shown: (path under figures/, caption).
FIGURES = [
    ("filters/squeezenet.png", "conv1 kernels of the real ImageNet SqueezeNet (Krizhevsky Fig. 3)"),
    ("occlusion/allcnn_fmnist.png", "occlusion sensitivity (Zeiler & Fergus Fig. 7)"),
    ("guided_backprop/squeezenet.png", "backprop / deconvnet / guided backprop (Springenberg)"),
    ("actmax/yosinski.png", "regularised class visualisations, settings 1-4 (Yosinski Table 1)"),
    ("dissection/headlines.png", "Network Dissection's headline comparisons (Bau)"),
    ("lm_context/lm_prose.png", "an LSTM's use of context (Khandelwal)"),
]
WIDTH = 480  # pixels: small enough for a README, large enough to read


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(rows: list[dict]) -> str:
    counts = {
        v: sum(r["verdict"] == v for r in rows) for v in ("pass", "fail", "inconclusive", "n/a")
    }
    lines = [
        ", ".join(f"{n} {v}" for v, n in counts.items()),
        "",
        "| experiment | claim | paper | value | 95% interval | null | verdict | conditions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["experiment"],
            f"{r['claim']} ({r['citation']})",
            r["paper"],
            r["value"],
            r["interval"],
            r["null"],
            f"**{r['verdict']}**",
            r["conditions"] or (r["reason"] if r["verdict"] == "n/a" else ""),
        ]
        lines.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def refresh(results: str | Path, docs: str | Path, readme: str | Path) -> list[Path]:
    """Copy the table and figures of the results folder `results` into `docs` and `readme`."""
    results, docs, readme = Path(results), Path(docs), Path(readme)
    tsv = results / "compare.tsv"
    if not tsv.exists():
        raise FileNotFoundError(f"{tsv} is missing: run the workflow into {results} first")
    with open(tsv, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    prov = json.loads((results / "provenance.json").read_text())
    origin = (
        f"version `{prov['version']}`, commit `{prov['git']['describe']}`, run "
        f"{prov['start'][:16].replace('T', ' ')} to {prov['end'][11:16]} UTC on "
        f"{prov['device']['cpu_count']} CPU cores"
    )
    written = []
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    shown = []
    for rel, caption in FIGURES:
        src = results / "figures" / rel
        if not src.exists():
            continue
        dest = docs / "figures" / rel.replace("/", "_")
        with Image.open(src) as im:
            im = im.convert("RGB")
            if im.width > WIDTH:
                im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.LANCZOS)
            im.save(dest, optimize=True)
        written.append(dest)
        shown.append(f"![{caption}](docs/figures/{dest.name})  \n*{caption}*")
    table = table_markdown(rows)
    (docs / "compare.md").write_text(
        f"# compare.tsv of the default profile\n\nFrom {origin}.\n\n{table}"
    )
    written.append(docs / "compare.md")
    block = "\n".join(
        [
            START,
            f"From a real run of the default profile ({origin}); the full table with the metric, "
            "the reason and the source of each claim is [docs/compare.md](docs/compare.md).",
            "",
            table,
            *(f"{s}\n" for s in shown),
            END,
        ]
    )
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the markers {START!r} ... {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + block + tail)
    return written


if __name__ == "__main__":
    import sys

    for path in refresh(sys.argv[1], "docs", "README.md"):
        print(path)
