"""Benchmark: our guided backprop and occlusion against Captum's, on the same model and inputs.

A benchmark, not a test. Run from the repository root:

    .venv/bin/python benchmarks/unit_methods.py [--device cpu|cuda|auto]
        [--arch alexnet|vgg16|squeezenet1_1 ...] [--size 224] [--batch N] [--repeats R]
        [--out results.json]

For each architecture (torchvision, weights=None, seeded random init, eval mode) it times

- guided backprop of the top-1 class for a batch of images:
  ours   `project(model, x, None, classes, "guided_backprop")`
  Captum `GuidedBackprop(model_copy).attribute(x, target=classes)`
  Captum's GuidedBackprop hooks ReLU *modules* and is only right when they run out of place, so
  it gets a deep copy of the model with `inplace=False` on every nn.ReLU. Ours runs on the
  original (in-place ReLUs, which the instrument catches at the function level).
- occlusion of one image (p(true class) for every position of a zero = mean-grey square):
  ours   `occlusion(model, x, target=c, layer=last_conv, window=w, stride=s, batch_size=B)`
  Captum `Occlusion(softmax(model)).attribute(x, sliding_window_shapes=(3, w, w),
         strides=(3, s, s), baselines=0, target=c, perturbations_per_eval=B)`
  Ours also records the last conv layer and keeps the label and feature maps: that work is part
  of its time. Both run under torch.no_grad.

Every measurement: untimed warm-up runs first (occlusion's on a coarse grid, stride = window),
then R repeats with ours and Captum interleaved, CUDA synchronised around each, the median time
reported. Agreement is max |ours - captum| / max |captum|; for occlusion Captum's map is rebuilt
from ours (per pixel: the mean over the windows covering it of p_clean - p_occluded, which is what
Captum's Occlusion returns).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from captum.attr import GuidedBackprop, Occlusion
from common import device_name, non_inplace_copy, print_table, resolve_device, timed, write_json
from torch import nn

from cvinterp.methods.backward import project
from cvinterp.methods.occlusion import occlusion, positions

ARCHS = ("alexnet", "vgg16", "squeezenet1_1")
LAST_CONV = {"alexnet": "features.10", "vgg16": "features.28", "squeezenet1_1": "features.12"}
SEED = 0
# Captum warns on every call that it sets requires_grad and ReLU hooks: expected here
warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")

# Defaults per device: (archs, batch, repeats, warmup, occlusion batch, window, stride)
DEFAULTS = {
    "cpu": dict(archs=["alexnet"], batch=8, repeats=3, warmup=1,
                occ_batch=32, window=32, stride=16),
    "cuda": dict(archs=["alexnet", "vgg16"], batch=64, repeats=10, warmup=3,
                 occ_batch=256, window=32, stride=8),
}  # fmt: skip


def build(arch: str, device: torch.device) -> nn.Module:
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, arch)(weights=None)
    return model.eval().to(device)


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


def bench_guided(model, twin, x, repeats, warmup, device) -> dict:
    with torch.no_grad():
        classes = model(x).argmax(1)  # top-1 class: its output is non-zero, so is the map
    gbp = GuidedBackprop(twin)
    runs = {
        "ours": lambda: project(model, x, None, classes, "guided_backprop")[0],
        "captum": lambda: gbp.attribute(x, target=classes),
    }
    med, outs = race(runs, device, repeats, warmup)
    n = len(x)
    return {
        "images": n,
        "seconds": med,
        "ours_images_per_s": n / med["ours"],
        "captum_images_per_s": n / med["captum"],
        "ratio_ours_over_captum": (n / med["ours"]) / (n / med["captum"]),
        "max_abs_diff_rel": rel_diff(outs["ours"], outs["captum"]),
    }


def captum_map_from_ours(maps, size: tuple[int, int]) -> torch.Tensor:
    """Per pixel: mean over covering windows of p_clean - p_occluded (Captum's Occlusion)."""
    total, weight = np.zeros(size), np.zeros(size)
    for (y0, y1, x0, x1), p in zip(maps.boxes, maps.p_true.ravel(), strict=True):
        total[y0:y1, x0:x1] += maps.p_true_clean - p
        weight[y0:y1, x0:x1] += 1
    return torch.from_numpy(total / np.maximum(weight, 1))


def bench_occlusion(model, arch, x1, window, stride, occ_batch, repeats, warmup, device) -> dict:
    with torch.no_grad():
        c = int(model(x1[None]).argmax(1))
    size = tuple(x1.shape[1:])
    _, grid = positions(size, window, stride)
    ours_n = grid[0] * grid[1]
    captum_grid = [(n - window) // stride + 1 for n in size]
    captum_n = captum_grid[0] * captum_grid[1]

    def probs(inp):
        return model(inp).softmax(1)

    occ = Occlusion(probs)

    def run_captum(stride):
        with torch.no_grad():
            return occ.attribute(
                x1[None],
                sliding_window_shapes=(3, window, window),
                strides=(3, stride, stride),
                baselines=0,
                target=c,
                perturbations_per_eval=occ_batch,
            )

    def run_ours(stride):
        return occlusion(
            model,
            x1,
            target=c,
            layer=LAST_CONV[arch],
            window=window,
            stride=stride,
            batch_size=occ_batch,
        )

    runs = {"ours": lambda: run_ours(stride), "captum": lambda: run_captum(stride)}
    # Warm up on a coarse grid (same code paths and batch size, a fraction of the positions)
    coarse = max(stride, window)  # Captum needs stride <= window
    warm = {"ours": lambda: run_ours(coarse), "captum": lambda: run_captum(coarse)}
    med, outs = race(runs, device, repeats, warmup, warm)
    agree = None
    if ours_n == captum_n:
        ref = outs["captum"][0].sum(0) / x1.shape[0]  # identical over channels
        agree = rel_diff(captum_map_from_ours(outs["ours"], size), ref)
    return {
        "window": window,
        "stride": stride,
        "batch_size": occ_batch,
        "positions_ours": ours_n,
        "positions_captum": captum_n,
        "seconds": med,
        "ours_windows_per_s": ours_n / med["ours"],
        "captum_windows_per_s": captum_n / med["captum"],
        "ratio_ours_over_captum": (ours_n / med["ours"]) / (captum_n / med["captum"]),
        "max_abs_diff_rel": agree,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--arch", nargs="+", choices=ARCHS, help="default: by device")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, help="guided-backprop batch (default: cpu 8, cuda 64)")
    ap.add_argument("--repeats", type=int, help="timed repeats (default: cpu 3, cuda 10)")
    ap.add_argument("--warmup", type=int, help="untimed runs first (default: cpu 1, cuda 3)")
    ap.add_argument("--occ-batch", type=int, help="occlusion positions per forward pass")
    ap.add_argument("--window", type=int, help="occlusion square (default 32)")
    ap.add_argument("--stride", type=int, help="occlusion stride (default: cpu 16, cuda 8)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(ap, args.device)
    d = DEFAULTS[device.type]
    archs = args.arch or d["archs"]
    batch = args.batch or d["batch"]
    repeats = args.repeats or d["repeats"]
    warmup = d["warmup"] if args.warmup is None else args.warmup
    occ_batch = args.occ_batch or d["occ_batch"]
    window = args.window or d["window"]
    stride = args.stride or d["stride"]

    result = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": __import__("captum").__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "note": "Captum runs on a deep copy with nn.ReLU(inplace=False) (its GuidedBackprop "
        "is wrong with in-place ReLUs); ours runs on the original in-place model",
        "archs": {},
    }
    print(
        f"device {device.type} ({result['device_name']}), torch {torch.__version__}, "
        f"captum {result['captum']}, {result['threads']} threads; size {args.size}, "
        f"batch {batch}, median of {repeats} after {warmup} warm-up"
    )
    print("note: " + result["note"])

    for arch in archs:
        model = build(arch, device)
        twin = non_inplace_copy(model)
        g = torch.Generator().manual_seed(SEED)
        x = torch.randn(batch, 3, args.size, args.size, generator=g).to(device)
        t0 = time.perf_counter()
        gb = bench_guided(model, twin, x, repeats, warmup, device)
        oc = bench_occlusion(model, arch, x[0], window, stride, occ_batch, repeats, warmup, device)
        result["archs"][arch] = {
            "guided_backprop": gb,
            "occlusion": oc,
            "wall_s": time.perf_counter() - t0,
        }
        del model, twin
        if device.type == "cuda":
            torch.cuda.empty_cache()

    rows = [("arch", "method", "unit", "ours", "captum", "ours/captum", "rel. diff")]
    for arch, r in result["archs"].items():
        gb, oc = r["guided_backprop"], r["occlusion"]
        rows.append(
            (
                arch,
                "guided backprop",
                "images/s",
                f"{gb['ours_images_per_s']:.2f}",
                f"{gb['captum_images_per_s']:.2f}",
                f"{gb['ratio_ours_over_captum']:.2f}",
                f"{gb['max_abs_diff_rel']:.1e}",
            )
        )
        agree = "n/a" if oc["max_abs_diff_rel"] is None else f"{oc['max_abs_diff_rel']:.1e}"
        rows.append(
            (
                arch,
                f"occlusion {oc['window']}/{oc['stride']} x{oc['positions_ours']}",
                "windows/s",
                f"{oc['ours_windows_per_s']:.1f}",
                f"{oc['captum_windows_per_s']:.1f}",
                f"{oc['ratio_ours_over_captum']:.2f}",
                agree,
            )
        )
    print_table(rows, left=3)
    print(f"occlusion: one image, batch {occ_batch} positions per forward pass")

    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
