"""Benchmark: incremental occlusion against full passes and against Captum's `Occlusion`.

A benchmark, not a test. Run from the repository root:

    .venv/bin/python benchmarks/occlusion.py [--device cpu|cuda|auto]
        [--arch alexnet|vgg16|squeezenet1_1 ...] [--size 224] [--window 32]
        [--stride 8 16] [--batch N] [--repeats R] [--threads T] [--out results.json]

For each architecture (torchvision, weights=None, seeded random init, eval mode) and stride, one
image (seeded Gaussian) is occluded at every position of a `window`-pixel zero (= mean grey)
square, p(top-1 class) kept, three ways on the same image, windows and stride:

- incremental: `occlusion(model, x, target=c, layer=last_conv, window=w, stride=s,
  batch_size=B)`, Nakandala et al.'s incremental inference (only the changed box of each layer
  recomputed from the clean image's activations);
- full:        the same with `incremental=False` (one full forward pass per position: the
  suite's occlusion before incremental inference);
- Captum:      `Occlusion(softmax(model)).attribute(x, sliding_window_shapes=(3, w, w),
  strides=(3, s, s), baselines=0, target=c, perturbations_per_eval=B)`.

Ours also records the last conv layer and keeps the label and feature maps: that work is part of
its time. All run under torch.no_grad. Captum's positions stop where the square last fits
((H - w) // s + 1 per side); ours add a last row and column flush with the border where the
stride does not reach it (none at 224 px, 32 px, stride 8 or 16).

Every measurement: one untimed warm-up of each on a coarse grid (stride = window), then R
repeats interleaved, CUDA synchronised around each, the median reported. Agreement: max |a - b|
/ max |b| between incremental and full (p(class) and the feature map's totals; float32:
within 1e-5), and between ours and Captum (Captum's per-pixel map rebuilt from ours: the mean
over the windows covering a pixel of p_clean - p_occluded). Also printed: the multiply-adds of
one incremental run over one full run (torch.utils.flop_counter), the bound on the speed-up
that skipping unchanged work can give, and where the boxes stopped (`OcclusionMaps.inference`).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torchvision
from captum.attr import Occlusion
from common import device_name, print_table, race, rel_diff, resolve_device, write_json
from torch.utils.flop_counter import FlopCounterMode

from cvinterp.methods.occlusion import occlusion, positions

ARCHS = ("alexnet", "vgg16", "squeezenet1_1")
LAST_CONV = {"alexnet": "features.10", "vgg16": "features.28", "squeezenet1_1": "features.12"}
SEED = 0
warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")

DEFAULTS = {  # per device: archs, positions per batch, repeats
    "cpu": dict(archs=["alexnet"], batch=128, repeats=3),
    "cuda": dict(archs=["alexnet", "vgg16", "squeezenet1_1"], batch=256, repeats=5),
}


def captum_map_from_ours(maps, size: tuple[int, int]) -> torch.Tensor:
    """Per pixel: mean over covering windows of p_clean - p_occluded (Captum's Occlusion)."""
    total, weight = np.zeros(size), np.zeros(size)
    for (y0, y1, x0, x1), p in zip(maps.boxes, maps.p_true.ravel(), strict=True):
        total[y0:y1, x0:x1] += maps.p_true_clean - p
        weight[y0:y1, x0:x1] += 1
    return torch.from_numpy(total / np.maximum(weight, 1))


def flops(fn) -> int:
    with FlopCounterMode(display=False) as count:
        fn()
    return count.get_total_flops()


def bench(model, arch, x, window, stride, batch, repeats, device) -> dict:
    with torch.no_grad():
        c = int(model(x[None]).argmax(1))
    size = tuple(x.shape[1:])
    _, grid = positions(size, window, stride)
    n = grid[0] * grid[1]
    n_captum = int(np.prod([(s - window) // stride + 1 for s in size]))
    occ = Occlusion(lambda inp: model(inp).softmax(1))

    def captum(s):
        with torch.no_grad():
            return occ.attribute(
                x[None],
                sliding_window_shapes=(3, window, window),
                strides=(3, s, s),
                baselines=0,
                target=c,
                perturbations_per_eval=batch,
            )

    def ours(s, incremental):
        where = dict(layer=LAST_CONV[arch], window=window, stride=s, batch_size=batch)
        return occlusion(model, x, c, incremental=incremental, **where)

    runs = {
        "incremental": lambda: ours(stride, True),
        "full": lambda: ours(stride, False),
        "captum": lambda: captum(stride),
    }
    coarse = max(stride, window)
    warm = {
        "incremental": lambda: ours(coarse, True),
        "full": lambda: ours(coarse, False),
        "captum": lambda: captum(coarse),
    }
    med, outs = race(runs, device, repeats, 1, warm)
    inc, full = outs["incremental"], outs["full"]
    agree_captum = None
    if n == n_captum:
        ref = outs["captum"][0].sum(0) / x.shape[0]  # identical over channels
        agree_captum = rel_diff(captum_map_from_ours(inc, size), ref)
    ratio = flops(runs["incremental"]) / flops(runs["full"])
    return {
        "window": window,
        "stride": stride,
        "batch_size": batch,
        "positions": n,
        "positions_captum": n_captum,
        "seconds": med,
        "windows_per_s": {k: (n_captum if k == "captum" else n) / t for k, t in med.items()},
        "ratio_incremental_over_captum": (n / med["incremental"]) / (n_captum / med["captum"]),
        "ratio_incremental_over_full": med["full"] / med["incremental"],
        "ratio_full_over_captum": (n / med["full"]) / (n_captum / med["captum"]),
        "flops_incremental_over_full": ratio,
        "speedup_bound": 1 / ratio,
        "inference": inc.inference,
        "rel_diff_incremental_full_p": rel_diff(
            torch.tensor(inc.p_true), torch.tensor(full.p_true)
        ),
        "rel_diff_incremental_full_feature": rel_diff(
            torch.tensor(inc.feature), torch.tensor(full.feature)
        ),
        "labels_differing": int((inc.label != full.label).sum()),
        "rel_diff_captum": agree_captum,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--arch", nargs="+", choices=ARCHS, help="default: by device")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--stride", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--batch", type=int, help="positions per forward pass (cpu 128, cuda 256)")
    ap.add_argument("--repeats", type=int, help="timed repeats (default: cpu 3, cuda 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(ap, args.device)
    torch.set_num_threads(args.threads)
    d = DEFAULTS[device.type]
    archs, batch = args.arch or d["archs"], args.batch or d["batch"]
    repeats = args.repeats or d["repeats"]
    result = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "captum": __import__("captum").__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "repeats": repeats,
        "archs": {},
    }
    print(
        f"device {device.type} ({result['device_name']}), torch {torch.__version__}, captum "
        f"{result['captum']}, {result['threads']} threads; {args.size} px, {args.window}-px "
        f"square, {batch} positions a batch, median of {repeats}"
    )
    rows = [("arch", "stride", "positions", "incremental", "full", "captum", "inc/captum",
             "inc/full", "MAC bound", "rel. diff inc-full", "vs captum")]  # fmt: skip
    for arch in archs:
        torch.manual_seed(SEED)
        model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
        g = torch.Generator().manual_seed(SEED)
        x = torch.randn(3, args.size, args.size, generator=g).to(device)
        result["archs"][arch] = {}
        for stride in args.stride:
            t0 = time.perf_counter()
            r = bench(model, arch, x, args.window, stride, batch, repeats, device)
            r["wall_s"] = time.perf_counter() - t0
            result["archs"][arch][str(stride)] = r
            w = r["windows_per_s"]
            diff = max(r["rel_diff_incremental_full_p"], r["rel_diff_incremental_full_feature"])
            captum = "n/a" if r["rel_diff_captum"] is None else f"{r['rel_diff_captum']:.1e}"
            rows.append((arch, str(stride), str(r["positions"]), f"{w['incremental']:.1f}",
                         f"{w['full']:.1f}", f"{w['captum']:.1f}",
                         f"{r['ratio_incremental_over_captum']:.2f}",
                         f"{r['ratio_incremental_over_full']:.2f}", f"{r['speedup_bound']:.2f}",
                         f"{diff:.1e}", captum))  # fmt: skip
            print(
                f"{arch} stride {stride}: {r['inference']}; {r['labels_differing']} labels differ"
            )
        del model
    print_table(rows, left=1)
    print("windows/s; MAC bound: full passes' multiply-adds over incremental's")
    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
