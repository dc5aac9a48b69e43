"""The rehearsal: the paper profile end to end, at a tiny size, on synthetic data written in the
real formats and downloaded from a local HTTP server (checksums, unpacking and all), before
anyone spends GPU-days on it. The run itself takes a few minutes on two cores; the other tests
are seconds."""

from __future__ import annotations

import csv
import gzip
import re
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from cvinterp.config import resolve
from cvinterp.data import fetch
from cvinterp.data.images import FASHION_FILES
from cvinterp.rehearsal import compose, synthetic
from cvinterp.rehearsal.serve import LocalServer
from cvinterp.rehearsal.table import rows
from tests.conftest import ROOT, SCHEMA, copy_workflow, snakemake

#: The one job of the paper profile the rehearsal's graph lacks: torchvision's weights.
WEIGHTS_JOBS = {"get_torchvision_weights"}


def paper() -> dict:
    return yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())


def job_counts(text: str) -> dict[str, int]:
    """{rule: jobs} from a Snakemake dry run's "Job stats" table."""
    stats = text[text.index("Job stats:") :]
    counts = {}
    for line in stats.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny rehearsal, run once for the module (Snakemake's own output kept for failures)."""
    wd = tmp_path_factory.mktemp("rehearsal")
    rc = compose.rehearse("tiny", wd, ["--quiet", "rules"], cores=2, workers=2)
    assert rc == 0, "the tiny rehearsal failed: see the output above"
    return wd


# ------------------------------------------------------------------ the run


def test_the_tiny_rehearsal_runs_every_experiment_of_the_paper_profile(tiny):
    results = tiny / "results" / "rehearsal-tiny"
    cfg = resolve(paper(), SCHEMA)
    for name in cfg["experiments"]:
        assert (results / "metrics" / f"{name}.json").is_file(), name
    with open(results / "compare.tsv") as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    assert table
    for row in table:  # every claim was measured: none left out, none for want of a folder
        assert "not run" not in row["reason"] and "ImageNet validation" not in row["reason"], row
    # the downloads came from the local server through the real download and unpacking code
    resources = tiny / "resources"
    for name in ("broden1_224.zip", "cifar-10-python.tar.gz", "wikitext-2-v1.zip"):
        assert (resources / "downloads" / name).is_file(), name
    assert list((resources / "broden1_224").rglob("index.csv"))  # unpacked


def test_the_rehearsal_has_the_paper_profiles_rule_graph(tiny, tmp_path):
    """Every rule of the paper profile (with an ImageNet folder, so nothing is left out), with
    as many jobs, but torchvision's weights download."""
    wd = copy_workflow(tmp_path)
    cfg = paper()
    cfg["datasets"]["imagenet_val"]["dir"] = str(tiny / "synthetic" / "imagenet-val")
    cfg["resources_dir"] = str(tmp_path / "resources")
    (wd / "config" / "paper_val.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(wd, "-n", "--configfile", "config/paper_val.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    wanted = job_counts(res.stdout)
    args = ["-n", "--forceall", "--snakefile", str(ROOT / "Snakefile")]
    res = snakemake(tiny, *args, "--configfile", str(tiny / "config.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    ran = job_counts(res.stdout)
    assert {r: n for r, n in wanted.items() if r not in WEIGHTS_JOBS} == ran


def test_the_per_job_table(tiny):
    table = {r["job"]: r for r in rows(tiny, "tiny")}
    cfg = resolve(paper(), SCHEMA)
    for job in [*cfg["experiments"], *(f"models/{m}" for m in cfg["models"])]:
        assert job in table, job
        assert float(table[job]["wall (s)"]) > 0
        assert float(table[job]["peak host memory (MiB)"]) > 0
    assert "tokens/s" in table["models/awd_lstm_ptb"]["throughput"]
    assert "images/s" in table["models/allcnn_cifar10"]["throughput"]
    assert "images/s" in table["ablation"]["throughput"]
    # the tiny size caps epochs 350 -> 1 and the images of an epoch 50,000 -> 128
    assert table["models/allcnn_cifar10"]["scale to paper"] == f"{350 * 50000 / 128:,.0f}x"
    assert table["ablation"]["scale to paper"] == ""  # three counts capped: no one scale


# ------------------------------------------------------------------ composing, serving


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*prefix, k))
    else:
        yield prefix, tree


def test_the_rehearsal_changes_only_counts_and_where_data_come_from(tmp_path):
    """Architectures, layers, batch sizes and schedules stay the paper profile's: the composed
    config differs from it only in the overrides' counts, the download addresses, the data
    folders, torchvision's weights (random) and the placement of the run."""
    for size, table in compose.sizes().items():
        manifest = {
            "sha256": {n: "0" * 64 for n in fetch.DOWNLOADS},
            "fashion_content_sha256": {},
            "imagenet_val": str(tmp_path / "val"),
        }
        cfg = compose.compose(size, tmp_path, "http://127.0.0.1:1/", manifest)
        allowed = {path for path, _ in _leaves(table.get("overrides") or {})}
        base = dict(_leaves(paper()))
        for path, value in _leaves(cfg):
            if path[0] in ("downloads", "resources_dir", "version", "device", "threads"):
                continue
            if path[:2] in (("datasets", "imagenet_val"), ("datasets", "fashion_mnist")):
                continue
            if path[0] == "models" and path[2:] == ("weights",) and base[path] != value:
                assert base[path] == "torchvision" and value == "random", path
                continue
            if path in base and base[path] == value:
                continue
            assert path in allowed, f"{size}: {'.'.join(map(str, path))} differs from paper"
            counts = value if isinstance(value, list) else [value]
            assert all(isinstance(v, int | float) for v in counts), path  # counts, no setting
        assert cfg["downloads"]["broden1_224.zip"]["url"] == "http://127.0.0.1:1/broden1_224.zip"


def test_the_full_size_has_the_papers_counts():
    spec = compose.sizes()["full"]["synthetic"]
    assert spec["broden"]["images"] == synthetic.BRODEN_IMAGES == 63305
    assert spec["imagenet_val"]["images"] == synthetic.IMAGENET_VAL_IMAGES == 50000
    assert (spec["cifar10"]["train"], spec["cifar10"]["test"]) == (50000, 10000)
    assert (spec["fashion_mnist"]["train"], spec["fashion_mnist"]["test"]) == (60000, 10000)
    assert "imagenet_probe" not in (compose.sizes()["full"]["overrides"].get("datasets") or {})


def test_a_served_file_with_the_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "serve").mkdir()
    synthetic.cifar10_tarball(tmp_path / "serve" / "cifar-10-python.tar.gz", 20, 10)
    good = synthetic.sha256(tmp_path / "serve" / "cifar-10-python.tar.gz")
    with LocalServer(tmp_path / "serve") as server:
        url = server.url("cifar-10-python.tar.gz")
        with pytest.raises(fetch.DataError, match="cifar-10-python.tar.gz"):
            fetch.download("cifar-10-python.tar.gz", tmp_path / "bad", url, "sha256:" + "1" * 64)
        got = fetch.download("cifar-10-python.tar.gz", tmp_path / "good", url, f"sha256:{good}")
    assert synthetic.sha256(got) == good


# ------------------------------------------------------------------ the real formats


def test_synthetic_files_are_in_the_real_formats(tmp_path):
    synthetic.cifar10_tarball(tmp_path / "c.tar.gz", 20, 10)
    with tarfile.open(tmp_path / "c.tar.gz") as tf:
        names = sorted(m.name for m in tf.getmembers() if m.isfile())
    assert "cifar-10-batches-py/data_batch_1" in names and "cifar-10-batches-py/test_batch" in names
    pins = synthetic.fashion_mnist(tmp_path / "fm", 30, 10)
    for name in pins:
        raw = gzip.open(tmp_path / "fm" / name).read()
        assert int.from_bytes(raw[:4], "big") in (2049, 2051)  # IDX magic: labels, images
    synthetic.wikitext2_zip(tmp_path / "w.zip", 3000, 200)
    with zipfile.ZipFile(tmp_path / "w.zip") as zf:
        assert {"wikitext-2/wiki.train.tokens", "wikitext-2/wiki.test.tokens"} <= set(zf.namelist())
    synthetic.imagenet_val(tmp_path / "val", 1000, sizes=((40, 30),))
    folders = sorted(p.name for p in (tmp_path / "val").iterdir())
    assert len(folders) == 1000 and all(re.fullmatch(r"n\d{8}", f) for f in folders)


def test_the_paper_profile_downloads_fashion_mnist_where_there_is_no_apt(tmp_path, monkeypatch):
    """Fix 6: the paper profile's Fashion-MNIST comes from Debian's package where apt-get works,
    else it is downloaded (it used to stop: the paper profile did not allow the download)."""
    allow = resolve(paper(), SCHEMA)["datasets"]["fashion_mnist"]["download"]
    pins = synthetic.fashion_mnist(tmp_path / "serve", 30, 10)

    def no_apt(package, paths, workdir):
        raise fetch.DataError(f"the Debian package {package} is needed but this system has no apt")

    monkeypatch.setattr(fetch, "debian_files", no_apt)
    names = [n for pair in FASHION_FILES.values() for n in pair]
    with LocalServer(tmp_path / "serve") as server:
        for n in names:  # the pinned addresses, served locally
            digest = synthetic.sha256(tmp_path / "serve" / n)
            monkeypatch.setitem(fetch.DOWNLOADS, n, (server.url(n), f"sha256:{digest}"))
        out = fetch.fashion_mnist_files(tmp_path / "dest", tmp_path / "work", None, allow, pins)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
