"""Seeding, determinism and device choice, from plain arguments."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch


def nvidia_gpu_present() -> str | None:
    """What shows an NVIDIA GPU on this machine whatever torch makes of it (the kernel driver's
    version file, a device node, or `nvidia-smi -L`), or None where none does."""
    version = Path("/proc/driver/nvidia/version")
    if version.exists():
        text = version.read_text(errors="replace").strip().splitlines()
        return f"NVIDIA driver loaded ({text[0].strip() if text else version})"
    if Path("/dev/nvidia0").exists():
        return "an NVIDIA device (/dev/nvidia0)"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
        if out.returncode == 0 and gpus:
            return f"nvidia-smi lists {gpus[0].strip()}"
    return None


def cuda_unusable_reason() -> str:
    """Why torch cannot use CUDA, in torch's own words where it gives them (the warning of
    `torch.cuda.is_available()`, or the error of initialising CUDA)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.is_available()
    said = [str(w.message).strip() for w in caught]
    if not said and torch.version.cuda is not None:
        try:
            torch.cuda.init()
        except Exception as err:  # what torch says is the reason; no other use is made of it
            said.append(str(err).strip())
    if torch.version.cuda is None:
        said.append(f"this torch ({torch.__version__}) is built without CUDA")
    else:
        said.append(f"this torch ({torch.__version__}) is built for CUDA {torch.version.cuda}")
    return "; ".join(s.splitlines()[0] if s else s for s in said if s)


class DeviceError(RuntimeError):
    """The configured device cannot be used; the message says why and what to set."""


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA, then MPS, then the CPU; an unavailable explicit choice is an error.
    `auto` on a machine with an NVIDIA GPU that torch cannot use (a driver too old for this
    torch, a CPU-only torch build) is an error too, rather than hours on the CPU unasked:
    `device: cpu` runs on the CPU on purpose."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        gpu = nvidia_gpu_present()
        if gpu is not None:
            raise DeviceError(
                f"device 'auto': this machine has an NVIDIA GPU ({gpu}) but torch cannot use "
                f"it ({cuda_unusable_reason()}). Install a torch build that matches the driver "
                "(or update the driver) to run on the GPU, or set `device: cpu` to run on the "
                "CPU on purpose."
            )
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("config asks for device 'cuda' but no CUDA device is visible; use auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("config asks for device 'mps' but MPS is not available; use auto")
    return torch.device(name)


def gpu_count() -> int:
    """CUDA devices torch can use on this machine (those CUDA_VISIBLE_DEVICES shows)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def seed_everything(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed Python, NumPy and torch, make CPU kernels deterministic; return a torch Generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)
