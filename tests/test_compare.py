"""compare.tsv: claims as data, verdicts by their rules, n/a with reasons."""

import json

import pytest
import yaml

from cvinterp.compare import COLUMNS, build_table, judge, load_claims, write_html, write_table
from tests.conftest import ROOT


def write(tmp_path, claims, metrics):
    cf = tmp_path / "p.yaml"
    cf.write_text(yaml.safe_dump({"paper": "p2000", "citation": "P. 2000", "claims": claims}))
    mf = tmp_path / "m.json"
    mf.write_text(json.dumps(metrics))
    return cf, mf


def claim(cid, **kw):
    return {
        "id": cid,
        "experiment": "exp",
        "claim": "c",
        "metric": "m",
        "paper": "1",
        "source": "Table 1",
        **kw,
    }


def test_verdicts(tmp_path):
    cf, mf = write(
        tmp_path,
        [
            claim("a", pass_if={"lt": 0.01}),
            claim("b", pass_if={"between": [1, 2]}),
            claim("c", pass_if={"gt": 5}),
            claim("d", pass_if={"gt": 0}),
        ],
        {
            "claims": {
                "a": {"value": 0.001, "ours": "p=0.001"},
                "b": {"value": 3, "interval": [2.5, 3.5]},
                "c": {"na": "grey images", "conditions": "grey stand-in"},
                "d": {"value": 0.2, "interval": [-0.1, 0.5]},
            }
        },
    )
    rows = build_table([cf], {"exp": mf})
    assert [r["verdict"] for r in rows] == ["pass", "fail", "n/a", "inconclusive"]
    assert rows[0]["interval"] == "exact" and rows[3]["interval"] == "[-0.1, 0.5]"
    assert rows[2]["reason"] == "grey images" and rows[2]["conditions"] == "grey stand-in"
    out = tmp_path / "compare.tsv"
    write_table(rows, out)
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == COLUMNS and len(lines) == 5
    assert {"interval", "null", "conditions"} <= set(COLUMNS)
    html = tmp_path / "compare.html"
    write_html(rows, html)
    text = html.read_text()
    assert text.count("<tr") == 5 and "#fff3b0" in text and "1 inconclusive" in text


@pytest.mark.parametrize(
    ("op", "threshold", "est", "expected"),
    [
        # the interval clears the threshold
        ("gt", 0, {"value": 0.3, "interval": [0.1, 0.5]}, "pass"),
        ("gt", 0, {"value": 0.3, "interval": [-0.1, 0.5]}, "inconclusive"),
        ("gt", 0, {"value": -0.3, "interval": [-0.5, -0.1]}, "fail"),
        ("gt", 0, {"value": 0.0, "interval": [0.0, 0.0]}, "fail"),
        ("ge", 0, {"value": 0.0, "interval": [0.0, 0.0]}, "pass"),
        ("lt", 1, {"value": 0.5, "interval": [0.2, 0.9]}, "pass"),
        ("lt", 1, {"value": 0.5, "interval": [0.2, 1.1]}, "inconclusive"),
        ("lt", 1, {"value": 1.5, "interval": [1.2, 1.9]}, "fail"),
        ("between", [1, 2], {"value": 1.5, "interval": [1.1, 1.9]}, "pass"),
        ("between", [1, 2], {"value": 1.5, "interval": [0.9, 1.9]}, "inconclusive"),
        ("between", [1, 2], {"value": 0.5, "interval": [0.2, 0.9]}, "fail"),
        # the interval must also clear the null's
        (
            "gt",
            0,
            {"value": 0.3, "interval": [0.2, 0.4], "null": 0.1, "null_interval": [0, 0.15]},
            "pass",
        ),
        (
            "gt",
            0,
            {"value": 0.3, "interval": [0.2, 0.4], "null": 0.25, "null_interval": [0.1, 0.3]},
            "inconclusive",
        ),
        (
            "gt",
            0,
            {"value": 0.3, "interval": [0.2, 0.4], "null": 0.5, "null_interval": [0.45, 0.6]},
            "fail",
        ),
        ("gt", 0, {"value": 0.3, "interval": [0.2, 0.4], "null": 0.3}, "inconclusive"),
        (
            "lt",
            1,
            {"value": 0.3, "interval": [0.2, 0.4], "null": 0.8, "null_interval": [0.6, 0.9]},
            "pass",
        ),
        (
            "lt",
            1,
            {"value": 0.3, "interval": [0.2, 0.4], "null": 0.1, "null_interval": [0.0, 0.2]},
            "fail",
        ),
        ("gt", 0, {"value": float("nan")}, "n/a"),
        # one image: the spread is unknown, so a value cannot pass (nor fail) on its own
        ("gt", 0, {"value": 0.3, "spread": "unknown"}, "inconclusive"),
        ("gt", 0, {"value": -0.3, "spread": "unknown"}, "inconclusive"),
        # an open end (a context never reached on the grid) is infinite
        ("between", [100, 400], {"value": 300, "interval": [200, None]}, "inconclusive"),
        ("gt", 1, {"value": 3, "interval": [2, None]}, "pass"),
    ],
)
def test_judge(op, threshold, est, expected):
    assert judge(op, threshold, est) == expected


def test_no_claim_passes_on_its_own_null():
    """An effect exactly at the null's level never passes, however tight its interval."""
    for v in (0.1, 1.0, 10.0):
        est = {"value": v, "interval": [v * 0.99, v * 1.01], "null": v, "null_interval": [v, v]}
        assert judge("gt", 0, est) != "pass"


def test_the_weakest_part_decides_and_a_nan_part_is_left_out_by_name(tmp_path):
    cf, mf = write(
        tmp_path,
        [claim("a", pass_if={"gt": 0}), claim("b", pass_if={"gt": 0})],
        {
            "claims": {
                "a": {
                    "parts": {
                        "m1": {"value": 0.5, "interval": [0.4, 0.6]},
                        "m2": {"value": 0.2, "interval": [-0.1, 0.4]},
                        "m3": {"value": 0.9, "interval": [0.8, 1.0]},
                    },
                    "ours": "three models",
                    "conditions": "small nets",
                },
                "b": {
                    "parts": {
                        "conv5": {"value": float("nan")},
                        "conv6": {"value": 0.5, "interval": [0.4, 0.6]},
                    },
                    "left_out": {"conv7": "no unit fires"},
                    "ours": "two layers",
                    "conditions": "",
                },
            }
        },
    )
    a, b = build_table([cf], {"exp": mf})
    assert a["verdict"] == "inconclusive" and a["value"] == "0.2" and "m2 decides" in a["reason"]
    assert b["verdict"] == "pass" and "conv5 (value is NaN)" in b["reason"]
    assert "conv7 (no unit fires)" in b["reason"]


def test_a_claim_without_a_rule_is_refused(tmp_path):
    cf, _ = write(tmp_path, [claim("a")], {})
    with pytest.raises(ValueError, match="has no pass_if"):
        load_claims([cf])


def test_experiment_not_run_and_missing_claim(tmp_path):
    cf, mf = write(tmp_path, [claim("a", pass_if={"lt": 1})], {"claims": {}})
    assert build_table([cf], {})[0]["reason"].startswith("experiment 'exp' was not run")
    with pytest.raises(KeyError, match="lack claim 'a'"):
        build_table([cf], {"exp": mf})


def test_bad_rule_is_refused(tmp_path):
    cf, _ = write(tmp_path, [claim("a", pass_if={"approx": 1})], {})
    with pytest.raises(ValueError, match="pass_if takes one of"):
        load_claims([cf])


def test_repo_claims_are_well_formed():
    claims = load_claims(sorted((ROOT / "config" / "claims").glob("*.yaml")))
    assert claims and all(c["source"] and c["paper"] for c in claims)


def test_a_misspelt_key_is_refused(tmp_path):
    """A misspelt pass_if used to make the claim silently qualitative (always n/a)."""
    cf, _ = write(tmp_path, [claim("a", pas_if={"lt": 1})], {})
    with pytest.raises(ValueError, match=r"claim a has unknown keys \['pas_if'\]"):
        load_claims([cf])
    cf.write_text(cf.read_text() + "departure: oops\n")
    with pytest.raises(ValueError, match=r"unknown keys \['departure'\]"):
        load_claims([cf])
