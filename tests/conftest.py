"""Shared fixtures: the repo root, the Fashion-MNIST files fetched once per session, and one
torch thread for modules of tiny tensors."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


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
