"""Benchmark: our guided backprop against Captum's, on the same model and inputs.

A benchmark, not a test. Run from the repository root:

    .venv/bin/python benchmarks/unit_methods.py [--device cpu|cuda|auto]
        [--arch alexnet|vgg16|squeezenet1_1 ...] [--size 224] [--batch N] [--repeats R]
        [--out results.json]

For each architecture (torchvision, weights=None, seeded random init, eval mode) it times
guided backprop of the top-1 class for a batch of images:

  ours   `project(model, x, None, classes, "guided_backprop")`
  Captum `GuidedBackprop(model_copy).attribute(x, target=classes)`

Captum's GuidedBackprop hooks ReLU *modules* and is only right when they run out of place, so it
gets a deep copy of the model with `inplace=False` on every nn.ReLU. Ours runs on the original
(in-place ReLUs, which the instrument catches at the function level).

Untimed warm-up runs first, then R repeats with ours and Captum interleaved, CUDA synchronised
around each, the median time reported. Agreement is max |ours - captum| / max |captum|.
Occlusion has its own benchmark (`benchmarks/occlusion.py`: incremental inference).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision
from captum.attr import GuidedBackprop
from common import (
    device_name,
    non_inplace_copy,
    print_table,
    race,
    rel_diff,
    resolve_device,
    write_json,
)
from torch import nn

from cvinterp.methods.backward import project

ARCHS = ("alexnet", "vgg16", "squeezenet1_1")
SEED = 0
# Captum warns on every call that it sets requires_grad and ReLU hooks: expected here
warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")

# Defaults per device: archs, batch, repeats, warm-up runs
DEFAULTS = {
    "cpu": dict(archs=["alexnet"], batch=8, repeats=3, warmup=1),
    "cuda": dict(archs=["alexnet", "vgg16"], batch=64, repeats=10, warmup=3),
}


def build(arch: str, device: torch.device) -> nn.Module:
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, arch)(weights=None)
    return model.eval().to(device)


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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--arch", nargs="+", choices=ARCHS, help="default: by device")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, help="guided-backprop batch (default: cpu 8, cuda 64)")
    ap.add_argument("--repeats", type=int, help="timed repeats (default: cpu 3, cuda 10)")
    ap.add_argument("--warmup", type=int, help="untimed runs first (default: cpu 1, cuda 3)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(ap, args.device)
    d = DEFAULTS[device.type]
    archs = args.arch or d["archs"]
    batch = args.batch or d["batch"]
    repeats = args.repeats or d["repeats"]
    warmup = d["warmup"] if args.warmup is None else args.warmup

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
        result["archs"][arch] = {"guided_backprop": gb, "wall_s": time.perf_counter() - t0}
        del model, twin
        if device.type == "cuda":
            torch.cuda.empty_cache()

    rows = [("arch", "images/s ours", "captum", "ours/captum", "rel. diff")]
    for arch, r in result["archs"].items():
        gb = r["guided_backprop"]
        rows.append(
            (
                arch,
                f"{gb['ours_images_per_s']:.2f}",
                f"{gb['captum_images_per_s']:.2f}",
                f"{gb['ratio_ours_over_captum']:.2f}",
                f"{gb['max_abs_diff_rel']:.1e}",
            )
        )
    print_table(rows)
    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
