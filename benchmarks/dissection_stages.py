"""Benchmark: Network Dissection's stages at Broden scale, on synthetic data.

A benchmark, not a test. Run from the repository root:

    PYTHONPATH=src python benchmarks/dissection_stages.py [--device auto] [--images 20000]
        [--batch 250] [--arch alexnet --layer conv5 --size 227] [--out results.json]

A randomly initialised torchvision net (seeded, eval) is dissected at one layer on `--images`
synthetic images made on the device (decoding is not part of this benchmark: it runs in the
DataLoader workers of `dissect`, see its stage times), with Broden-like label planes at the
mask resolution (half the image side, 3 planes: object blobs, a part/material plane, a
whole-image scene label; 1,200 concepts in 6 categories). It times the two passes as `dissect`
runs them: pass 1 = forward + streaming quantile, pass 2 = forward again (activations not
cached) + tally. Each stage is synchronised on CUDA; the result is seconds per stage and
images/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, resolve_device, sync, write_json  # noqa: E402

from cvinterp.instrument import Instrument  # noqa: E402
from cvinterp.methods import dissection as nd  # noqa: E402
from cvinterp.models import build, layer_path  # noqa: E402


def _planes(gen, b: int, size: int, concepts: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, 3, size, size) concept + 1 planes and (b, 6) carried categories."""
    yy, xx = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device),
                            indexing="ij")  # fmt: skip
    planes = torch.zeros(b, 3, size, size, dtype=torch.int64, device=device)
    for plane, lo, hi in ((0, 1, 600), (1, 600, 1000)):
        for _ in range(3):
            c = torch.rand(b, 2, device=device, generator=gen) * size
            r = (0.1 + 0.25 * torch.rand(b, device=device, generator=gen)) * size
            inside = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2 < (
                r[:, None, None] ** 2
            )
            label = torch.randint(lo, hi, (b,), device=device, generator=gen)
            planes[:, plane][inside] = label[:, None, None].expand(-1, size, size)[inside]
    planes[:, 2] = torch.randint(1000, concepts + 1, (b, 1, 1), device=device, generator=gen)
    carried = torch.ones(b, 6, dtype=torch.bool, device=device)
    return planes, carried


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="alexnet")
    ap.add_argument("--layer", default="conv5")
    ap.add_argument("--size", type=int, default=227)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    device = resolve_device(ap, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.arch, 1000, 3).to(device).eval()
    path = layer_path(args.arch, args.layer)
    concepts = 1200
    cats = np.repeat(np.arange(6), concepts // 6)
    categories = ["object", "part", "material", "color", "texture", "scene"]
    names = [str(i) for i in range(concepts)]
    c = nd.Concepts(list(range(1, concepts + 1)), names, categories, cats, {})
    mask = (args.size + 1) // 2
    batches = [min(args.batch, args.images - s) for s in range(0, args.images, args.batch)]
    seconds = dict.fromkeys(["inputs", "forward", "quantile", "labels", "tally"], 0.0)

    def lap(stage, t0):
        sync(device)
        now = time.perf_counter()
        seconds[stage] += now - t0
        return now

    def forward(gen, b):
        t = time.perf_counter()
        x = torch.randn(b, 3, args.size, args.size, device=device, generator=gen)
        t = lap("inputs", t)
        with torch.no_grad(), Instrument(model, [path], detach=True, stop_early=True) as ins:
            ins.forward(x)
            acts = ins[path].clamp(min=0)
        lap("forward", t)
        return acts

    start = time.perf_counter()
    gen = torch.Generator(device).manual_seed(1)
    quant = nd.TopQuantile(args.images)
    for b in batches:
        acts = forward(gen, b)
        t = time.perf_counter()
        quant.update(acts)
        lap("quantile", t)
    thresholds = quant.thresholds()
    tally = nd.Tally(thresholds.numel(), c, device)
    gen = torch.Generator(device).manual_seed(1)  # the same images again
    lgen = torch.Generator(device).manual_seed(2)
    for b in batches:
        acts = forward(gen, b)
        t = time.perf_counter()
        planes, carried = _planes(lgen, b, mask, concepts, device)
        t = lap("labels", t)
        tally.update(acts, thresholds, planes, carried)
        lap("tally", t)
    iou = tally.iou()
    sync(device)
    total = time.perf_counter() - start
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "arch": args.arch,
        "layer": args.layer,
        "size": args.size,
        "images": args.images,
        "batch": args.batch,
        "units": int(thresholds.numel()),
        "map": list(acts.shape[2:]),
        "mask": [mask, mask],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "total_seconds": round(total, 3),
        "images_per_s": {
            "forward (two passes)": round(2 * args.images / max(seconds["forward"], 1e-9), 1),
            "quantile": round(args.images / max(seconds["quantile"], 1e-9), 1),
            "tally": round(args.images / max(seconds["tally"], 1e-9), 1),
            "end to end": round(args.images / total, 1),
        },
        "max_iou": float(iou.max()),
    }
    print(
        f"{result['device']}, {args.arch} {args.layer} ({result['units']} units, map "
        f"{result['map']}, masks {mask}x{mask}), {args.images} images of {args.size} px"
    )
    for k, v in result["seconds"].items():
        print(f"  {k:10s} {v:8.2f} s")
    print(f"  total      {total:8.2f} s; images/s: {result['images_per_s']}")
    if args.out:
        write_json(result, args.out)


if __name__ == "__main__":
    main()
