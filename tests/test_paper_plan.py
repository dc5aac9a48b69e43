"""The paper profile's plan on a machine as a user finds it: what it leaves out without the
ImageNet folder (and how the comparison says so), a results folder that hashes what determines
the results only, a GPU torch cannot use, GPU jobs bounded by the machine's GPUs, and the
ablation cache against the device's free memory. Dry runs and unit tests: seconds each."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from cvinterp import config as cc
from cvinterp import runtime
from cvinterp.compare import build_table
from cvinterp.config import ConfigError, resolve
from cvinterp.methods import ablation as ab
from tests.conftest import ROOT, SCHEMA, copy_workflow, snakemake

LEFT_OUT = "cvinterp: left out without datasets.imagenet_val.dir"
CLAIMS = sorted((ROOT / "config" / "claims").glob("*.yaml"))


def profile(name: str) -> dict:
    return resolve(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()), SCHEMA)


def imagenet_tree(root: Path, classes: int = 1000, images: int = 1, payload: bytes = b"") -> Path:
    """A folder laid out as the ImageNet validation set: the official wnid folders (when the
    list is at hand), each with `images` files."""
    wnids_file = ROOT / "src" / "cvinterp" / "data" / "imagenet_wnids.txt"
    wnids = wnids_file.read_text().split() if wnids_file.exists() else []
    wnids = (wnids or [f"n{i:08d}" for i in range(classes)])[:classes]
    for c, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            name = f"ILSVRC2012_val_{c * images + i + 1:08d}.JPEG"
            (root / wnid / name).write_bytes(payload or f"{wnid}/{i}".encode())
    return root


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.fixture(scope="module")
def paper_plan(workflow_copy) -> str:
    """The paper profile's dry run as shipped (no ImageNet folder)."""
    return plan(workflow_copy)


def plan(wd: Path, *config: str, configfile: str = "config/paper.yaml", env=None) -> str:
    args = ["-n", "--configfile", configfile]
    res = snakemake(wd, *args, *(["--config", *config] if config else []), env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def paper_with(wd: Path, name: str, edit) -> str:
    """A copy of the paper profile with `edit` applied, as a config file of the workflow copy."""
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    edit(cfg)
    (wd / "config" / name).write_text(yaml.safe_dump(cfg))
    return f"config/{name}"


# ------------------------------------------------------------- 2: no ImageNet folder


def test_paper_plan_without_imagenet_leaves_out_what_needs_it_in_one_line(paper_plan):
    text = paper_plan
    lines = [line for line in text.splitlines() if line.startswith(LEFT_OUT)]
    assert len(lines) == 1, lines
    assert "ablation (alexnet, vgg16)" in lines[0]
    assert "inversion_learned (alexnet)" in lines[0]
    assert "set datasets.imagenet_val.dir" in lines[0]
    assert "rule ablation:" not in text and "rule inversion_learned:" not in text
    assert "metrics/ablation.json" not in text
    # everything else is still planned
    for rule in ("dissection", "top_images", "lm_context", "compare", "language_model"):
        assert f"rule {rule}:" in text


def test_paper_plan_with_an_imagenet_folder_keeps_everything(workflow_copy, tmp_path):
    tree = imagenet_tree(tmp_path / "val")
    name = paper_with(
        workflow_copy,
        "paper_imagenet.yaml",
        lambda c: c["datasets"]["imagenet_val"].update(dir=str(tree)),
    )
    text = plan(workflow_copy, configfile=name)
    assert LEFT_OUT not in text
    assert "rule ablation:" in text and "rule inversion_learned:" in text


def test_default_and_smoke_profiles_leave_nothing_out():
    for name in ("config", "smoke"):
        cfg = profile(name)
        assert not cfg["datasets"]["imagenet_val"]["dir"]
        planned, left_out = cc.leave_out_without_imagenet(cfg)
        assert left_out == {} and planned == cfg


def test_only_the_imagenet_nets_of_an_experiment_are_left_out():
    cfg = profile("paper")
    cfg["experiments"]["ablation"]["models"]["allcnn_cifar10"] = {"layers": ["conv6"]}
    planned, left_out = cc.leave_out_without_imagenet(cfg)
    assert left_out == {"ablation": ["alexnet", "vgg16"], "inversion_learned": ["alexnet"]}
    assert list(planned["experiments"]["ablation"]["models"]) == ["allcnn_cifar10"]
    assert "inversion_learned" not in planned["experiments"]
    assert "allcnn_cifar10" in cfg["experiments"]["ablation"]["models"]  # input untouched
    assert "alexnet" in cfg["experiments"]["ablation"]["models"]
    reasons = cc.left_out_reasons(left_out, planned)
    assert reasons["inversion_learned"].startswith("not run: alexnet needs the ImageNet")
    assert reasons["ablation"].startswith("left out: alexnet, vgg16 need the ImageNet")


def test_claims_of_an_experiment_left_out_are_na_with_the_reason(tmp_path):
    why = "not run: alexnet, vgg16 need the ImageNet validation folder; set it"
    rows = build_table(CLAIMS, {}, left_out={"ablation": why})
    ablation = [r for r in rows if r["experiment"] == "ablation"]
    assert ablation and all(r["verdict"] == "n/a" and r["reason"] == why for r in ablation)
    others = [r for r in rows if r["experiment"] != "ablation"]
    assert all("was not run in this profile" in r["reason"] for r in others)


def test_the_compare_job_says_why_ablation_is_na(tmp_path):
    """The left-out reasons flow from the plan into compare.tsv and compare.html: the compare job
    run for real on metrics files of the planned experiments (only the compare rule allowed)."""
    (tmp_path / "wf").mkdir()
    wd = copy_workflow(tmp_path / "wf")
    cfg = profile("paper")
    version = cc.version_of(cfg)
    planned, _ = cc.leave_out_without_imagenet(cfg)
    ids: dict[str, list[str]] = {}
    for path in CLAIMS:
        for c in yaml.safe_load(path.read_text())["claims"]:
            ids.setdefault(c["experiment"], []).append(c["id"])
    for e in planned["experiments"]:
        p = wd / "results" / version / "metrics" / f"{e}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"claims": {i: {"na": "measured elsewhere"} for i in ids[e]}}))
    res = snakemake(
        wd, "-c1", "--configfile", "config/paper.yaml", "--allowed-rules", "compare", "--",
        "compare",
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    table = (wd / "results" / version / "compare.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in table]
    head = rows[0]
    col = {k: head.index(k) for k in ("experiment", "verdict", "reason")}
    for e in ("ablation", "inversion_learned"):
        mine = [r for r in rows[1:] if r[col["experiment"]] == e]
        assert len(mine) == len(ids[e])
        for r in mine:
            assert r[col["verdict"]] == "n/a"
            assert "ImageNet validation folder" in r[col["reason"]]
            assert "datasets.imagenet_val.dir" in r[col["reason"]]
    html = (wd / "results" / version / "compare.html").read_text()
    assert "need the ImageNet validation folder" in html


# ------------------------------------------------------------- 3: the results version


def test_version_ignores_threads_device_and_where_things_lie():
    a = profile("paper")
    for key, value in (("threads", 16), ("device", "cpu"), ("resources_dir", "/elsewhere")):
        assert cc.config_hash(a | {key: value}) == cc.config_hash(a), key
    assert cc.config_hash(a | {"seed": 1}) != cc.config_hash(a)


def test_a_data_folder_is_hashed_by_its_content_not_its_path(tmp_path):
    one = imagenet_tree(tmp_path / "one", classes=20, images=3)
    two = imagenet_tree(tmp_path / "elsewhere" / "two", classes=20, images=3)
    other = imagenet_tree(tmp_path / "other", classes=20, images=3)
    (next(other.iterdir()) / "extra.JPEG").write_bytes(b"one more image")
    edited = imagenet_tree(tmp_path / "edited", classes=20, images=3)
    first = sorted(p for p in edited.rglob("*") if p.is_file())[0]
    first.write_bytes(first.read_bytes()[::-1] + b"")  # same size, other bytes
    assert cc.folder_fingerprint(one) == cc.folder_fingerprint(two)
    assert cc.folder_fingerprint(one) != cc.folder_fingerprint(other)
    assert cc.folder_fingerprint(one) != cc.folder_fingerprint(edited)  # all files sampled here

    def with_dir(folder):
        cfg = profile("paper")
        cfg["datasets"]["imagenet_val"]["dir"] = str(folder)
        return cfg

    assert cc.config_hash(with_dir(one)) == cc.config_hash(with_dir(two))
    assert cc.config_hash(with_dir(one)) != cc.config_hash(with_dir(other))
    assert cc.config_hash(with_dir(one)) != cc.config_hash(profile("paper"))  # no folder: null
    with pytest.raises(ConfigError, match="datasets.imagenet_val.dir"):
        cc.config_hash(with_dir(tmp_path / "missing"))


def test_a_results_folder_is_kept_when_only_placement_changes(tmp_path):
    one = imagenet_tree(tmp_path / "one", classes=5)
    two = imagenet_tree(tmp_path / "two", classes=5)
    other = imagenet_tree(tmp_path / "other", classes=6)
    a = profile("paper")
    a["datasets"]["imagenet_val"]["dir"] = str(one)
    cc.claim_version_folder(tmp_path / "v", a)
    b = copy.deepcopy(a) | {"threads": 16, "device": "cuda"}
    b["datasets"]["imagenet_val"]["dir"] = str(two)
    cc.check_version_folder(tmp_path / "v", b)  # threads, device, the folder's path: the same
    assert cc.version_of(a) == cc.version_of(b)
    c = copy.deepcopy(a)
    c["datasets"]["imagenet_val"]["dir"] = str(other)
    with pytest.raises(ConfigError, match="never overwritten"):
        cc.check_version_folder(tmp_path / "v", c)


def test_paper_plan_keeps_its_results_folder_with_more_threads(workflow_copy, paper_plan):
    def folders(text):
        return set(re.findall(r"results/(paper-[0-9a-f]{8})/", text))

    eight = folders(paper_plan)
    sixteen = folders(plan(workflow_copy, "threads=16", "device=cuda"))
    assert len(eight) == 1 and eight == sixteen


def test_fingerprint_of_a_large_tree_is_fast(tmp_path):
    import time

    tree = imagenet_tree(tmp_path / "val", classes=1000, images=5)
    start = time.perf_counter()
    cc.folder_fingerprint(tree)
    assert time.perf_counter() - start < 2  # 5,000 files; 50,000 take well under 2 s


# ------------------------------------------------------------- 7a: a GPU torch cannot use


def test_auto_refuses_a_gpu_torch_cannot_use_and_cpu_stays_possible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(
        runtime, "nvidia_gpu_present", lambda: "NVIDIA driver 470.57", raising=False
    )
    monkeypatch.setattr(
        runtime, "cuda_unusable_reason", lambda: "the NVIDIA driver is too old", raising=False
    )
    with pytest.raises(RuntimeError) as err:
        runtime.pick_device("auto")
    message = str(err.value)
    assert "NVIDIA driver 470.57" in message and "too old" in message
    assert "device: cpu" in message
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_auto_takes_the_cpu_where_there_is_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "nvidia_gpu_present", lambda: None)
    assert runtime.pick_device("auto") == torch.device("cpu")


def test_the_gpu_is_detected_from_the_driver_whatever_torch_says(monkeypatch, tmp_path):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.57.02\n")
    real = Path

    def fake(p):
        if str(p) == "/proc/driver/nvidia/version":
            return version
        if str(p) == "/dev/nvidia0":
            return tmp_path / "absent"
        return real(p)

    monkeypatch.setattr(runtime, "Path", fake)
    assert "470.57.02" in runtime.nvidia_gpu_present()
    message = runtime.cuda_unusable_reason()
    assert torch.__version__ in message


# ------------------------------------------------------------- 7b: one GPU job per GPU

FAKE_GPUS = (
    "import torch\ntorch.cuda.is_available = lambda: True\ntorch.cuda.device_count = lambda: {n}\n"
)


def fake_gpus(tmp_path: Path, n: int) -> dict:
    """An environment whose Python sees `n` CUDA devices (torch's count patched at start-up)."""
    folder = tmp_path / f"gpus{n}"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(FAKE_GPUS.format(n=n))
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    }


def model_resources(text: str) -> list[str]:
    return re.findall(r"^\s*rule model:\n(?:\s+.*\n)*?\s+resources: (.*)$", text, re.M)


def test_gpu_jobs_ask_for_a_gpu_on_a_gpu_machine_in_any_profile(workflow_copy, tmp_path):
    text = plan(workflow_copy, "device=auto", configfile="config/config.yaml",
                env=fake_gpus(tmp_path, 1))  # fmt: skip
    jobs = model_resources(text)
    assert jobs and all("gpu=1" in r for r in jobs), jobs
    # without a GPU the default profile's jobs ask for none: they run side by side as before
    jobs = model_resources(plan(workflow_copy, "device=auto", configfile="config/config.yaml"))
    assert jobs and all("gpu=0" in r for r in jobs), jobs


def test_a_local_run_is_bounded_by_the_machine_gpus(workflow_copy, tmp_path):
    """The paper profile run locally: the scheduler is given the machine's GPUs as its `gpu`
    resource, so no more GPU jobs run at once than there are GPUs; --resources overrides."""
    (tmp_path / "wf").mkdir()
    wd = copy_workflow(tmp_path / "wf")
    env = fake_gpus(tmp_path, 2)
    args = ["-c2", "--configfile", "config/paper.yaml", "--config", f"resources_dir={tmp_path}"]
    res = snakemake(wd, *args, "--", "bibliography", env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert re.search(r"Provided resources: .*gpu\W+2\b", res.stdout + res.stderr)
    (wd / "results").rename(wd / "first")
    res = snakemake(wd, *args, "--resources", "gpu=1", "--", "bibliography", env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert re.search(r"Provided resources: .*gpu\W+1\b", res.stdout + res.stderr)


# ------------------------------------------------------------- 7c: the ablation cache


def test_the_cache_goes_to_the_device_only_when_it_fits_in_free_memory():
    gib = 2**30
    work = ab.working_bytes(50 * 2**20)
    assert work > ab.RESERVE_BYTES
    # VGG16 conv5_3 over 50,000 images: 20 GB, within cache_mb 24000
    total = 50_000 * 512 * 14 * 14 * 4
    assert ab.cache_on_device(total, 24000, None, work)  # no free-memory report: cache_mb
    assert ab.cache_on_device(total, 24000, 80 * gib, work)  # an 80 GB card
    assert not ab.cache_on_device(total, 24000, 22 * gib, work)  # a 24 GB card: host
    assert not ab.cache_on_device(total, 1000, 80 * gib, work)  # over cache_mb: host
    assert not ab.cache_on_device(total, 24000, total + work - 1, work)
    assert ab.cache_on_device(total, 24000, total + work, work)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_the_ablation_cache_asks_the_device_for_its_free_memory(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(40, 3, 8, 8, dtype=torch.float64)
    y = torch.arange(40) % 4
    net = _Net().double().eval()

    def engine():
        e = ab.Ablation(net, "conv", "cpu")
        e.cache(zip(x.split(16), y.split(16), strict=True), 1e6, len(x))
        return e

    monkeypatch.setattr(ab, "device_free_bytes", lambda device: None, raising=False)
    fits = engine()
    asked = []

    def little(device):
        asked.append(torch.device(device))
        return 2**20  # 1 MiB free: less than the reserve

    monkeypatch.setattr(ab, "device_free_bytes", little, raising=False)
    host = engine()
    assert asked and not fits.on_host and host.on_host
    keep = torch.cat([ab.single_units(8), ab.cumulative(range(8), 8, [0, 3, 8])])
    assert torch.equal(host.correct(keep, group=5), fits.correct(keep, group=5))
    assert torch.equal(host.class_means(), fits.class_means())
