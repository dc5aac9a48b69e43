"""compare.tsv: claims as data, verdicts by their rules, n/a with reasons."""

import json

import pytest
import yaml

from cvinterp.compare import COLUMNS, build_table, load_claims, write_table
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
            claim("d"),
        ],
        {
            "claims": {
                "a": {"value": 0.001, "ours": "p=0.001"},
                "b": {"value": 3},
                "c": {"na": "grey images"},
                "d": {"value": 1},
            }
        },
    )
    rows = {r["ours"] or r["reason"]: r for r in build_table([cf], {"exp": mf})}
    verdicts = [r["verdict"] for r in build_table([cf], {"exp": mf})]
    assert verdicts == ["pass", "fail", "n/a", "n/a"]
    assert rows["grey images"]["verdict"] == "n/a"
    out = tmp_path / "compare.tsv"
    write_table(build_table([cf], {"exp": mf}), out)
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == COLUMNS and len(lines) == 5


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
