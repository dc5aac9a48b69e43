"""The filters experiment on each profile's kind of model set: every claim id is always
reported."""

import json

import pytest
import torch

from cvinterp.compare import build_table
from cvinterp.experiments import Model, Probe, run
from cvinterp.models import Preprocessing, build, save_checkpoint
from tests.conftest import ROOT

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
    assert len(rows) == 4
    result = json.loads(metrics.read_text())
    if profile == "paper-like":
        assert result["imagenet_dichotomy"]["model"] == "alexnet"
        assert {r["verdict"] for r in rows if "ImageNet" in r["claim"]} <= {"pass", "fail"}
        assert result["colour_contrast"]["model"] == "tower"
    else:
        assert all(r["verdict"] == "n/a" for r in rows)
