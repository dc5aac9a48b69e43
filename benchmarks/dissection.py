"""Benchmark: the batched Network Dissection tally against a per-image, per-unit loop, and
against the tally of an earlier revision.

A benchmark, not a test. Run from the repository root:

    .venv/bin/python benchmarks/dissection.py [--device cpu|cuda|auto] [--units U] [--map h]
        [--mask s] [--concepts C] [--planes L] [--images N] [--loop-images n] [--batch B]
        [--scoring original|lite] [--upsample fieldmap|bilinear] [--baseline REV]
        [--repeats R] [--loop-repeats r] [--threads T] [--out results.json]

Synthetic, seeded workload shaped like AlexNet conv5 on broden1_227 (defaults): U = 256 units
with 13x13 maps, label masks at 113x113, C = 60 concepts in K = 5 categories (object, part,
material and colour concepts drawn as rectangles and ellipses in pixel planes, scene concepts as
whole-image labels filling a plane), L = 3 label planes per image (concept + 1, 0 = none; an
object concept can sit in two planes at a pixel, and counts once per plane). Activations are
the ReLU of 3x3-smoothed Gaussian noise with a per-unit offset and scale and a per-(image,
unit) gain, so that the active pixels gather on a few images as real features do. The
thresholds are `TopQuantile` over all N images at quantile 0.005.

On the first n images (the loop is slow), the same counts are computed two ways:

- batched: `Tally.update` over batches of B images (only the maps whose peak passes the
  threshold are upsampled), scored as `--scoring` (default original) and upsampled as
  `--upsample` (default fieldmap: CaffeNet conv5's receptive-field centres on 227-px inputs);
- loop:    for each image, for each unit: upsample that one map to the mask size (bilinear:
  `F.interpolate(..., mode="bilinear", align_corners=False)`; fieldmap: scipy's
  `RectBivariateSpline(kx=1, ky=1)` through the centres, as the authors' `upsampleL`), threshold
  it, and for each concept present on the image count its intersection with the concept's
  planes (once per plane); activation area per (unit, category) over the images carrying a
  label of the category (original) or towards the categories of the labels under the active
  pixels (lite), and truth per concept; IoU = inter / (area[u, category[c]] + truth[c] - inter).

With `--baseline REV` the tally of `src/cvinterp/methods/dissection.py` at git revision REV
(read with `git show`) is timed on the same N images in the same run, with its own default
scoring; the ratio of throughputs is printed.

Both must give identical integer counts (intersection, activation area, truth); the script exits
with status 1 when they do not, after printing and writing its results. (One known way for them
to differ, absent from this workload: a map whose peak equals its unit's threshold over a flat
patch; float rounding of the bilinear weights can lift upsampled pixels there a hair above the
threshold, which the loop counts and the tally's peak filter skips.) Also timed, for
information: `TopQuantile` over all N images, and the batched tally's throughput on all N images
(images/s). Timing: one untimed warm-up of each (one batch, one image), then R repeats (r for the
loop, default 1: it takes about 10 s on 2 CPU threads), CUDA synchronised around each, the median
reported. Torch runs on T CPU threads (default 2).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import types
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from common import device_name, print_table, resolve_device, timed, write_json

from cvinterp.methods.dissection import QUANTILE, Concepts, Tally, TopQuantile, Upsampler

SEED = 0
CATEGORIES = ("object", "part", "material", "color", "scene")
SHARE = (0.4, 0.15, 0.15, 0.15, 0.15)  # of the concepts in each category
WHOLE_IMAGE = "scene"  # the category labelled for the whole image
CAFFENET_CONV5 = ((-64, -64), (163, 163), (16, 16))  # its fieldmap (tests/test_fieldmap.py)
INPUT_SIZE = 227


def make_concepts(n: int) -> Concepts:
    counts = np.floor(np.array(SHARE) * n).astype(int)
    counts[0] += n - counts.sum()
    if n < len(CATEGORIES) or (counts < 1).any():
        raise SystemExit(f"--concepts must be at least {len(CATEGORIES)}")
    category = np.repeat(np.arange(len(CATEGORIES)), counts).astype(np.int64)
    return Concepts(
        numbers=list(range(1, n + 1)),
        names=[f"{CATEGORIES[k]}-{i}" for i, k in enumerate(category)],
        categories=list(CATEGORIES),
        category=category,
        lookup=np.zeros(0, np.int32),  # unused by Tally
    )


def make_activations(n: int, units: int, side: int) -> torch.Tensor:
    """(n, units, side, side) float32, non-negative, spatially smooth, sparse by unit."""
    g = torch.Generator().manual_seed(SEED)
    noise = torch.randn(n, units, side + 2, side + 2, generator=g)
    smooth = F.avg_pool2d(noise, 3, stride=1) * 3  # unit variance again
    offset = torch.rand(units, generator=g) * 1.5 - 0.5  # some units sparser than others
    scale = torch.exp(torch.randn(units, generator=g) * 0.5)
    gain = torch.exp(torch.randn(n, units, generator=g) * 0.5)
    acts = (smooth - offset.view(1, -1, 1, 1)) * (scale.view(1, -1, 1, 1) * gain[..., None, None])
    return acts.relu_()


def make_planes(
    n: int, concepts: Concepts, planes: int, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label planes int32 (n, planes, side, side) of concept + 1 (0 = none), and the categories
    each image carries, bool (n, K). Plane 0: object shapes; the middle planes: shapes of a
    random pixel category (sometimes object again, so that a plane can repeat a concept); the
    last plane: a whole-image scene label (on 70% of the images; zeros otherwise)."""
    rng = np.random.default_rng(SEED)
    k = len(concepts.categories)
    members = [np.flatnonzero(concepts.category == j) for j in range(k)]
    scene = concepts.categories.index(WHOLE_IMAGE)
    pixel_cats = [j for j in range(k) if j != scene]
    out = np.zeros((n, planes, side, side), np.int32)
    carried = np.zeros((n, k), bool)
    yy, xx = np.mgrid[:side, :side]
    for b in range(n):
        for p in range(planes):
            if p == planes - 1 and planes > 1:  # whole-image label
                if rng.random() < 0.7:
                    out[b, p] = rng.choice(members[scene]) + 1
                continue
            cat = pixel_cats[0] if p == 0 else rng.choice(pixel_cats)
            plane = out[b, p]
            for _ in range(rng.integers(0, 7)):
                c = rng.choice(members[cat]) + 1
                y0, x0 = rng.integers(0, side, 2)
                ry, rx = rng.integers(side // 16 + 1, side // 3 + 2, 2)
                if rng.random() < 0.5:  # rectangle
                    plane[max(0, y0 - ry) : y0 + ry, max(0, x0 - rx) : x0 + rx] = c
                else:  # ellipse
                    plane[((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 <= 1] = c
        present = np.unique(out[b])  # carried: the categories of the labels present
        carried[b, concepts.category[present[present > 0] - 1]] = True
    return torch.from_numpy(out), torch.from_numpy(carried)


def run_tally(acts, thresholds, planes, carried, concepts, batch: int, make=Tally) -> Tally:
    tally = make(acts.shape[1], concepts, acts.device)
    for i in range(0, len(acts), batch):
        s = slice(i, i + batch)
        tally.update(acts[s], thresholds, planes[s], carried[s])
    return tally


def run_quantile(acts, total: int, batch: int) -> torch.Tensor:
    quant = TopQuantile(total, QUANTILE)
    for i in range(0, len(acts), batch):
        quant.update(acts[i : i + batch])
    return quant.thresholds()


def upsample_one(a: torch.Tensor, size, fieldmap) -> torch.Tensor:
    """One (h, w) map at the mask size: bilinear, or through the receptive-field centres."""
    if fieldmap is None:
        return F.interpolate(a[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    from scipy.interpolate import RectBivariateSpline

    from cvinterp.fieldmap import mask_centres

    ys, xs = mask_centres(fieldmap, tuple(a.shape), INPUT_SIZE, size)
    spline = RectBivariateSpline(ys, xs, a.cpu().double().numpy(), kx=1, ky=1)
    up = spline(np.arange(size[0]), np.arange(size[1]))
    return torch.from_numpy(up.astype(np.float32)).to(a.device)


def run_loop(
    acts, thresholds, planes, carried, category, scoring="original", fieldmap=None
) -> dict[str, torch.Tensor]:
    """The naive tally: one image, one unit, one concept at a time."""
    n, units = acts.shape[:2]
    size = tuple(planes.shape[-2:])
    n_concepts, k = len(category), carried.shape[1]
    inter = torch.zeros(units, n_concepts, dtype=torch.int64)
    area = torch.zeros(units, k, dtype=torch.int64)
    truth = torch.zeros(n_concepts, dtype=torch.int64)
    for b in range(n):
        present = [int(v) - 1 for v in torch.unique(planes[b]).tolist() if v > 0]
        masks = {c: (planes[b] == c + 1).sum(0) for c in present}  # once per plane
        for c in present:
            truth[c] += int(masks[c].sum())
        cats = carried[b].nonzero().flatten().cpu()
        for u in range(units):
            active = upsample_one(acts[b, u], size, fieldmap) > thresholds[u]
            if scoring == "lite":  # the categories of the labels under the active pixels
                under = planes[b][:, active]
                cats = torch.unique(category[under[under > 0].long().cpu() - 1])
            area[u, cats] += int(active.sum())
            for c in present:
                inter[u, c] += int((active * masks[c]).sum())
    union = area[:, category] + truth - inter
    iou = torch.where(union > 0, inter.double() / union.clamp(min=1), torch.zeros(()).double())
    return {"intersection": inter, "activation": area, "truth": truth, "iou": iou}


def baseline_tally(rev: str):
    """The `Tally` class of `src/cvinterp/methods/dissection.py` at git revision `rev` (this
    repository's own history), for timing side by side with today's."""
    src = subprocess.run(
        ["git", "show", f"{rev}:src/cvinterp/methods/dissection.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("baseline_dissection")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(src, f"{rev}:src/cvinterp/methods/dissection.py", "exec"), module.__dict__)
    return module.Tally


def median_time(fn: Callable[[], object], device, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t, out = timed(fn, device)
        times.append(t)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--units", type=int, default=256, help="units U (default 256)")
    ap.add_argument("--map", type=int, default=13, help="activation map side h (default 13)")
    ap.add_argument("--mask", type=int, default=113, help="mask side (default 113)")
    ap.add_argument("--concepts", type=int, default=60, help="concepts C (default 60)")
    ap.add_argument("--planes", type=int, default=3, help="label planes L (default 3)")
    ap.add_argument("--images", type=int, default=512,
                    help="images N: thresholds and throughput (default 512)")  # fmt: skip
    ap.add_argument("--loop-images", type=int, default=32,
                    help="images n compared with the loop (default 32)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=32, help="tally batch B (default 32)")
    ap.add_argument("--scoring", choices=["original", "lite"], default="original")
    ap.add_argument("--upsample", choices=["fieldmap", "bilinear"], default="fieldmap",
                    help="fieldmap: CaffeNet conv5's centres on 227 px (default)")  # fmt: skip
    ap.add_argument("--baseline", metavar="REV",
                    help="also time the tally of this git revision")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats R (default 3)")
    ap.add_argument("--loop-repeats", type=int, default=1,
                    help="timed repeats of the loop (default 1)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(ap, args.device)
    torch.set_num_threads(args.threads)
    n_all = max(args.images, args.loop_images)
    n_loop = args.loop_images

    concepts = make_concepts(args.concepts)
    acts = make_activations(n_all, args.units, args.map).to(device)
    planes, carried = make_planes(n_all, concepts, args.planes, args.mask)
    planes, carried = planes.to(device), carried.to(device)
    category = torch.as_tensor(concepts.category)
    fieldmap = CAFFENET_CONV5 if args.upsample == "fieldmap" else None

    def make(units, concepts, device):
        return Tally(
            units, concepts, device, scoring=args.scoring, upsampler=Upsampler(fieldmap, INPUT_SIZE)
        )

    # thresholds over the whole probe set (as dissect's first pass), timed for information
    run_quantile(acts[: args.batch], n_all, args.batch)  # warm-up
    t_quant, thresholds = median_time(
        lambda: run_quantile(acts, n_all, args.batch), device, args.repeats
    )

    few = acts[:n_loop], thresholds, planes[:n_loop], carried[:n_loop]  # the compared images
    first = acts[: args.batch], thresholds, planes[: args.batch], carried[: args.batch]
    run_tally(*first, concepts, args.batch, make)  # warm-ups
    scored = (category, args.scoring, fieldmap)
    run_loop(*(x[:1] if x is not thresholds else x for x in first), *scored)
    t_batched, tally = median_time(
        lambda: run_tally(*few, concepts, args.batch, make), device, args.repeats
    )
    t_loop, loop = median_time(lambda: run_loop(*few, *scored), device, args.loop_repeats)
    everything = acts, thresholds, planes, carried, concepts, args.batch
    t_all, _ = median_time(lambda: run_tally(*everything, make), device, args.repeats)
    t_base = None
    if args.baseline:
        old = baseline_tally(args.baseline)
        run_tally(*first, concepts, args.batch, old)  # warm-up
        t_base, _ = median_time(lambda: run_tally(*everything, old), device, args.repeats)

    ours = {
        "intersection": tally.intersection.view(args.units, -1).cpu(),
        "activation": tally.activation.cpu(),
        "truth": tally.truth.cpu(),
        "iou": tally.iou().cpu(),
    }
    counts = ("intersection", "activation", "truth")
    equal = {key: bool(torch.equal(ours[key], loop[key])) for key in counts}
    iou_diff = float((ours["iou"] - loop["iou"]).abs().max())
    up_active = int(loop["activation"].sum())  # upsampled active pixels, summed over categories
    a = acts[:n_loop]
    src_active = float((a > thresholds.view(1, -1, 1, 1)).float().mean())
    peaks = float((a.amax((2, 3)) > thresholds.view(1, -1)).float().mean())
    iou = ours["iou"]

    result = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "units": args.units,
        "map": [args.map, args.map],
        "mask": [args.mask, args.mask],
        "concepts": args.concepts,
        "categories": list(CATEGORIES),
        "planes": args.planes,
        "images": n_all,
        "loop_images": n_loop,
        "batch": args.batch,
        "scoring": args.scoring,
        "upsample": args.upsample,
        "baseline": args.baseline,
        "repeats": args.repeats,
        "loop_repeats": args.loop_repeats,
        "quantile": QUANTILE,
        "seconds": {
            "quantile_all_images": t_quant,
            "batched_loop_images": t_batched,
            "loop_loop_images": t_loop,
            "batched_all_images": t_all,
            "baseline_all_images": t_base,
        },
        "images_per_second": {
            "quantile": n_all / t_quant,
            "batched": n_loop / t_batched,
            "loop": n_loop / t_loop,
            "batched_all_images": n_all / t_all,
        },
        "ratio_loop_over_batched": t_loop / t_batched,
        "ratio_batched_over_baseline": None if t_base is None else t_all / t_base,
        "agreement": {
            "intersection_equal": equal["intersection"],
            "activation_equal": equal["activation"],
            "truth_equal": equal["truth"],
            "iou_max_abs_diff": iou_diff,
        },
        "workload": {
            "source_fraction_active": src_active,
            "maps_with_peak_over_threshold": peaks,
            "nonzero_intersections": int((ours["intersection"] > 0).sum()),
            "intersection_total": int(ours["intersection"].sum()),
            "activation_total": up_active,
            "truth_total": int(ours["truth"].sum()),
            "max_iou": float(iou.max()),
            "units_best_iou_over_0.04": int((iou.max(1).values > 0.04).sum()),
        },
    }

    print(
        f"device {device.type} ({result['device_name']}), torch {torch.__version__}, "
        f"{result['threads']} threads; U={args.units} maps {args.map}x{args.map}, masks "
        f"{args.mask}x{args.mask}, C={args.concepts} in K={len(CATEGORIES)}, L={args.planes}; "
        f"{args.scoring} scoring, {args.upsample} upsampling; batch {args.batch}; median of "
        f"{args.repeats} (loop {args.loop_repeats}) after a warm-up"
    )
    print(
        f"thresholds: TopQuantile q={QUANTILE} over {n_all} images; on the first {n_loop}: "
        f"{src_active:.2%} of source pixels and {peaks:.1%} of maps pass"
    )
    rows = [("method", "images", "seconds", "images/s", "x batched")]
    rows.append(("TopQuantile", str(n_all), f"{t_quant:.4f}", f"{n_all / t_quant:.0f}", ""))
    rows.append(("Tally batched", str(n_loop), f"{t_batched:.4f}", f"{n_loop / t_batched:.0f}",
                 "1.00"))  # fmt: skip
    rows.append(("loop", str(n_loop), f"{t_loop:.4f}", f"{n_loop / t_loop:.1f}",
                 f"{t_loop / t_batched:.1f}"))  # fmt: skip
    rows.append(("Tally batched", str(n_all), f"{t_all:.4f}", f"{n_all / t_all:.0f}", ""))
    if t_base is not None:
        rows.append((f"Tally at {args.baseline}", str(n_all), f"{t_base:.4f}",
                     f"{n_all / t_base:.0f}", f"{t_base / t_all:.2f}"))  # fmt: skip
    print_table(rows, left=1)
    word = {key: "equal" if same else "DIFFER" for key, same in equal.items()}
    print(
        f"agreement on {n_loop} images: intersection {word['intersection']}, activation "
        f"{word['activation']}, truth {word['truth']}; max |IoU diff| {iou_diff:.3g} "
        f"({result['workload']['nonzero_intersections']} nonzero intersections, max IoU "
        f"{result['workload']['max_iou']:.3f})"
    )

    if args.out:
        write_json(result, args.out)
    if not all(equal.values()):
        raise SystemExit("batched and loop counts differ")
    return result


if __name__ == "__main__":
    main()
