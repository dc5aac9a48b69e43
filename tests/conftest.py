"""Shared fixtures: the repo root, the Fashion-MNIST files fetched once per session, one torch
thread for modules of tiny tensors, and the smoke profile run once per session (the workflow, the
report, the cluster and the fault tests all read it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Values that measure the machine, not the method: they differ between any two runs.
TIMING_WORDS = ("seconds", "per_second", "speed", "elapsed", "rss")


def copy_workflow(dest: Path) -> Path:
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def measured(value):
    """A metrics document without the values that time the machine."""
    if isinstance(value, dict):
        return {
            k: measured(v)
            for k, v in value.items()
            if not any(w in k.lower() for w in TIMING_WORDS)
        }
    if isinstance(value, list):
        return [measured(v) for v in value]
    return value


def snakemake(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The verified Fashion-MNIST IDX files (from the Debian package, fetched if needed)."""
    from cvinterp.data.fetch import fashion_mnist_files

    return fashion_mnist_files(
        ROOT / "resources" / "fashion-mnist",
        workdir=ROOT / "resources" / "packages",
        source_dir=None,
        allow_download=False,
    )


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is as fast, and many times faster when the cores are busy.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, fashion_dir):
    """The smoke profile run locally: (workflow folder, its results folder, --config override)."""
    wd = copy_workflow(tmp_path_factory.mktemp("wf"))
    shared = f"resources_dir={ROOT / 'resources'}"
    res = snakemake(wd, "--configfile", "config/smoke.yaml", "-c", "2", "--config", shared)
    assert res.returncode == 0, res.stderr[-3000:]
    (version,) = [p for p in (wd / "results").iterdir()]
    return wd, version, shared


def claim_verdict(claim_id: str, entry: dict, experiment: str | None = None) -> str:
    """The verdict compare.tsv gives the repository's claim `claim_id` for a metrics entry, by
    the claim's own rule in config/claims (for tests that pin a claim builder's verdicts)."""
    from cvinterp.compare import decide, load_claims

    claims = load_claims(sorted((ROOT / "config" / "claims").glob("*.yaml")))
    (claim,) = [
        c
        for c in claims
        if c["id"] == claim_id and (experiment is None or c["experiment"] == experiment)
    ]
    return decide(claim, entry)["verdict"]
