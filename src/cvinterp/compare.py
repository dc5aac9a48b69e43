"""The comparison table: each paper's claims (data in config/claims) against our metrics.

A claim names the experiment and the key of the measured value in that experiment's metrics
(`claims.<id>`), and a rule `pass_if` for the verdict. An experiment reports, for each claim id,
either {"na": "reason"} or an entry of `cvinterp.stats.claim`: one estimate per part (model or
layer: value, 95% interval, null) with the text `ours` and the `conditions` of the run. A single
estimate may also sit at the top level of the entry.

Verdicts: pass when the interval clears the threshold and the null, fail when it lies on the
wrong side of either, inconclusive when it straddles; n/a when the profile cannot measure it. A
claim over several parts takes its weakest part's verdict (fail < inconclusive < pass).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml

COLUMNS = [
    "experiment",
    "id",
    "claim",
    "metric",
    "paper",
    "ours",
    "value",
    "interval",
    "null",
    "conditions",
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
            if "pass_if" not in c:
                raise ValueError(
                    f"{path}: claim {c['id']} has no pass_if: every claim needs a rule"
                )
            if len(c["pass_if"]) != 1 or next(iter(c["pass_if"])) not in OPS:
                raise ValueError(f"{path}: claim {c['id']}: pass_if takes one of {sorted(OPS)}")
            claims.append({**c, "paper_key": doc["paper"], "citation": doc["citation"]})
    return claims


#: The four verdicts, weakest first: a claim over several parts takes its weakest part's.
VERDICTS = ("fail", "inconclusive", "pass")


def _interval(est: dict) -> tuple[float, float]:
    """The 95% interval; an open end (null in the JSON) is infinite."""
    v = est["value"]
    lo, hi = est.get("interval", (v, v))
    return (-np.inf if lo is None else lo, np.inf if hi is None else hi)


def judge(op: str, threshold, est: dict) -> str:
    """The verdict of one estimate under a rule: pass when its 95% interval clears the
    threshold and the null's interval (more than chance), fail when the interval lies on the
    wrong side of the threshold or not beyond the null, inconclusive when it straddles either.
    A NaN value is n/a."""
    v = est["value"]
    if v is None or np.isnan(v):
        return "n/a"
    if est.get("spread") == "unknown":  # one image, one class: no interval to judge by
        return "inconclusive"
    lo, hi = _interval(est)
    if op == "between":
        a, b = threshold
        if a <= lo and hi <= b:
            return "pass"
        return "fail" if hi < a or lo > b else "inconclusive"
    null = est.get("null")
    nlo, nhi = tuple(est.get("null_interval", (null, null)))
    if op in ("gt", "ge"):
        near, far = lo, hi  # the end that must clear, the end that shows a failure
        beyond_null = null is None or near > nhi
        not_beyond = null is not None and far <= nlo
    else:
        near, far = hi, lo
        beyond_null = null is None or near < nlo
        not_beyond = null is not None and far >= nhi
    if OPS[op](near, threshold) and beyond_null:
        return "pass"
    if not OPS[op](far, threshold) or not_beyond:
        return "fail"
    return "inconclusive"


def _margin(op: str, threshold, est: dict) -> float:
    """How far the estimate sits on the passing side (to pick the deciding part among ties)."""
    v = est["value"]
    if op == "between":
        return min(v - threshold[0], threshold[1] - v)
    return v - threshold if op in ("gt", "ge") else threshold - v


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _interval_text(est: dict) -> str:
    if est.get("spread") == "unknown":
        return "unknown (one sample)"
    if "interval" not in est:
        return "exact"
    lo, hi = _interval(est)
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _null_text(est: dict) -> str:
    if "null" not in est:
        return ""
    text = _fmt(est["null"])
    if "null_interval" in est:
        lo, hi = est["null_interval"]
        text += f" [{_fmt(lo)}, {_fmt(hi)}]"
    return text


def decide(claim: dict, measured: dict | None) -> dict:
    """The table's cells for one claim given its measured entry (or None): ours, value,
    interval, null, conditions, verdict and reason. The weakest part decides."""
    blank = {"ours": "", "value": "", "interval": "", "null": "", "conditions": ""}
    if measured is None:
        reason = f"experiment '{claim['experiment']}' was not run in this profile"
        return {**blank, "verdict": "n/a", "reason": reason}
    conditions = measured.get("conditions", "")
    if "na" in measured:
        return {**blank, "conditions": conditions, "verdict": "n/a", "reason": measured["na"]}
    parts = measured.get("parts")
    if parts is None:  # one estimate at the top level
        parts = {
            "": {
                k: measured[k]
                for k in ("value", "interval", "null", "null_interval")
                if k in measured
            }
        }
    ((op, threshold),) = claim["pass_if"].items()
    verdicts = {name: judge(op, threshold, est) for name, est in parts.items()}
    left_out = dict(measured.get("left_out", {}))
    left_out.update({n: "value is NaN" for n, v in verdicts.items() if v == "n/a"})
    judged = {n: v for n, v in verdicts.items() if v != "n/a"}
    ours = measured.get("ours") or _fmt(next(iter(parts.values()))["value"])
    if not judged:
        why = "; ".join(f"{n}: {w}" for n, w in left_out.items())
        return {**blank, "ours": ours, "conditions": conditions, "verdict": "n/a", "reason": why}
    weakest = min(judged.values(), key=VERDICTS.index)
    name = min(
        (n for n, v in judged.items() if v == weakest),
        key=lambda n: _margin(op, threshold, parts[n]),
    )
    est = parts[name]
    rule = f"pass if the 95% interval is {op} {threshold}"
    if any("null" in e for e in parts.values()):
        rule += " and clear of the null's"
    reason = (
        f"{rule}; "
        + (f"{name} decides: " if name else "")
        + (f"value {_fmt(est['value'])}, interval {_interval_text(est)}")
    )
    if "null" in est:
        reason += f", null {_null_text(est)}"
    if len(judged) > 1:
        reason += "; " + ", ".join(f"{n} {v}" for n, v in judged.items())
    if left_out:
        reason += "; left out: " + "; ".join(f"{n} ({w})" for n, w in left_out.items())
    return {
        "ours": ours,
        "value": _fmt(est["value"]),
        "interval": _interval_text(est),
        "null": _null_text(est),
        "conditions": conditions,
        "verdict": weakest,
        "reason": reason,
    }


def build_table(
    claim_files: list[str | Path],
    metrics_files: dict[str, str | Path],
    left_out: dict[str, str] | None = None,
) -> list[dict]:
    """One row per claim; metrics_files maps experiment name -> its metrics JSON. `left_out`
    maps an experiment the plan left out, whole or some of its models, to the reason (e.g. no
    ImageNet folder): the claims of one left out whole are n/a with it; the others say it
    after their own reason."""
    metrics = {e: json.loads(Path(p).read_text()) for e, p in metrics_files.items()}
    left_out = left_out or {}
    rows = []
    for c in load_claims(claim_files):
        exp = metrics.get(c["experiment"])
        measured = None if exp is None else exp.get("claims", {}).get(c["id"])
        if exp is not None and measured is None:
            raise KeyError(f"metrics of {c['experiment']} lack claim {c['id']!r}")
        why = left_out.get(c["experiment"])
        if exp is None and why:
            measured = {"na": why}
        cells = decide(c, measured)
        if exp is not None and why:
            cells["reason"] = f"{cells['reason']}; {why}" if cells["reason"] else why
        rows.append(
            {
                "experiment": c["experiment"],
                "id": c["id"],
                "claim": c["claim"],
                "metric": c["metric"],
                "paper": c["paper"],
                **cells,
                "source": c["source"],
                "citation": c["paper_key"],
            }
        )
    return rows


def write_table(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


_COLOURS = {"pass": "#c8e6c9", "fail": "#ffcdd2", "inconclusive": "#fff3b0", "n/a": "#e0e0e0"}


def write_html(rows: list[dict], path: str | Path) -> None:
    """The table as one HTML page for the report, the four verdicts coloured."""
    import html

    shown = [c for c in COLUMNS if c not in ("id", "metric", "citation")]
    head = "".join(f"<th>{c}</th>" for c in shown)
    body = []
    for r in rows:
        cells = "".join(
            f'<td style="background:{_COLOURS[r["verdict"]]}">{html.escape(r[c])}</td>'
            if c == "verdict"
            else f"<td>{html.escape(str(r[c]))}</td>"
            for c in shown
        )
        body.append(f'<tr class="{r["verdict"].replace("/", "")}">{cells}</tr>')
    counts = ", ".join(f"{sum(r['verdict'] == v for r in rows)} {v}" for v in _COLOURS)
    Path(path).write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>compare</title><style>'
        "table{border-collapse:collapse;font:13px sans-serif}td,th{border:1px solid #bbb;"
        "padding:3px;vertical-align:top}</style></head><body>"
        f"<p>{counts}</p><table><tr>{head}</tr>{''.join(body)}</table></body></html>\n"
    )
