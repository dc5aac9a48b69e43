"""The comparison table: each paper's claims (data in config/claims) against our metrics.

A claim names the experiment and the key of the measured value in that experiment's metrics
(`claims.<id>`), and a rule `pass_if` for the verdict. An experiment reports either
{"value": x, "ours": "text"} or {"na": "reason"} for each claim id.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

COLUMNS = [
    "experiment",
    "claim",
    "metric",
    "paper",
    "ours",
    "verdict",
    "source",
    "reason",
    "citation",
]
OPS = {
    "lt": lambda v, t: v < t,
    "le": lambda v, t: v <= t,
    "gt": lambda v, t: v > t,
    "ge": lambda v, t: v >= t,
    "between": lambda v, t: t[0] <= v <= t[1],
}


#: Keys of a claim file, and of each of its claims: `departures` (the file) and `notes` (a
#: claim) say where we still depart from the authors and why, for readers of the file.
FILE_KEYS = {"paper", "citation", "claims", "departures"}
CLAIM_KEYS = {"id", "experiment", "claim", "metric", "paper", "source", "pass_if", "notes"}


def load_claims(paths: list[str | Path]) -> list[dict]:
    """Every claim of the claim files; a missing or unknown key (a misspelt `pass_if` would
    make a claim silently qualitative) is an error naming the file."""
    claims = []
    for path in sorted(map(Path, paths)):
        doc = yaml.safe_load(path.read_text())
        unknown = set(doc) - FILE_KEYS
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(FILE_KEYS)}")
        for c in doc["claims"]:
            missing = {"id", "experiment", "claim", "metric", "paper", "source"} - set(c)
            if missing:
                raise ValueError(f"{path}: claim {c.get('id')} lacks {sorted(missing)}")
            unknown = set(c) - CLAIM_KEYS
            if unknown:
                raise ValueError(
                    f"{path}: claim {c['id']} has unknown keys {sorted(unknown)}; known: "
                    f"{sorted(CLAIM_KEYS)}"
                )
            if "pass_if" in c and (len(c["pass_if"]) != 1 or next(iter(c["pass_if"])) not in OPS):
                raise ValueError(f"{path}: claim {c['id']}: pass_if takes one of {sorted(OPS)}")
            claims.append({**c, "paper_key": doc["paper"], "citation": doc["citation"]})
    return claims


def verdict(claim: dict, measured: dict | None) -> tuple[str, str, str]:
    """(ours, verdict, reason) for one claim given its measured entry (or None)."""
    if measured is None:
        return "", "n/a", f"experiment '{claim['experiment']}' was not run in this profile"
    if "na" in measured:
        return "", "n/a", measured["na"]
    value = measured["value"]
    ours = measured.get("ours", f"{value:.4g}")
    if "pass_if" not in claim:
        return ours, "n/a", "qualitative claim: no pass rule, see the figure"
    ((op, threshold),) = claim["pass_if"].items()
    ok = OPS[op](value, threshold)
    return ours, "pass" if ok else "fail", f"pass if value {op} {threshold}; value = {value:.4g}"


def build_table(claim_files: list[str | Path], metrics_files: dict[str, str | Path]) -> list[dict]:
    """One row per claim; metrics_files maps experiment name -> its metrics JSON."""
    metrics = {e: json.loads(Path(p).read_text()) for e, p in metrics_files.items()}
    rows = []
    for c in load_claims(claim_files):
        exp = metrics.get(c["experiment"])
        measured = None if exp is None else exp.get("claims", {}).get(c["id"])
        if exp is not None and measured is None:
            raise KeyError(f"metrics of {c['experiment']} lack claim {c['id']!r}")
        ours, v, reason = verdict(c, measured)
        rows.append(
            {
                "experiment": c["experiment"],
                "claim": c["claim"],
                "metric": c["metric"],
                "paper": c["paper"],
                "ours": ours,
                "verdict": v,
                "source": c["source"],
                "reason": reason,
                "citation": c["paper_key"],
            }
        )
    return rows


def write_table(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
