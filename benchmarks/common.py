"""Helpers the benchmarks share: the device's name, a non-in-place model twin, timing, output."""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(parser, name: str) -> torch.device:
    """--device auto|cpu|cuda as a torch device; an unavailable CUDA is a usage error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")
    return torch.device(name)


def non_inplace_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every nn.ReLU out of place (what hook-based libraries need)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return twin.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, the device synchronised around it."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


def print_table(rows: list[tuple[str, ...]], left: int = 1) -> None:
    """Print rows (the first is the header) as aligned columns: the first `left` columns
    left-aligned, the rest right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j < left else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if i == 0:
            print("  ".join("-" * w for w in widths))


def race(
    runs: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int,
    warmup_runs: dict[str, Callable[[], object]] | None = None,
) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per run of each callable, interleaved; plus the last output of each.
    `warmup_runs` (default: `runs`) are what the untimed warm-up calls."""
    outs: dict[str, object] = {}
    for _ in range(warmup):
        for fn in (warmup_runs or runs).values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t, outs[name] = timed(fn, device)
            times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}, outs


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().item()
    return float((ours - ref).abs().max().item() / scale) if scale > 0 else float("nan")
