"""What produced a results folder: code version, config, packages, hardware, times."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from cvinterp.results import write_json

PACKAGES = [
    "cvinterp",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-learn",
    "scikit-image",
    "matplotlib",
    "snakemake",
    "mlxtend",
    "openTSNE",
    "ndf",
    "pooch",
    "jsonschema",
    "pyyaml",
]


def git_state(repo: str | Path = ".") -> dict:
    def git(*args):
        res = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "describe": git("describe", "--always", "--dirty"),
        "dirty": bool(status) if status is not None else None,
    }


def package_versions(names: list[str] = PACKAGES) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def device_info() -> dict:
    import torch

    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cpu": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_provenance(
    path: str | Path,
    *,
    config: dict,
    version: str,
    start_file: str | Path,
    outputs: list[str],
    repo: str | Path = ".",
) -> None:
    start = Path(start_file).read_text().strip() if Path(start_file).exists() else None
    payload = {
        "version": version,
        "git": git_state(repo),
        "config": config,
        "packages": package_versions(),
        "device": device_info() | {"requested_device": config["device"]},
        "start": start,
        "end": now(),
        "outputs": sorted(outputs),
    }
    write_json(path, payload)
