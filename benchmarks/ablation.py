"""Benchmark: the cached, batched single-unit ablation engine against one forward pass per unit.

A benchmark, not a test. Run from the repository root:

    .venv/bin/python benchmarks/ablation.py [--device cpu|cuda|auto] [--arch alexnet]
        [--layer conv5] [--size 224] [--classes 1000] [--in-channels 3] [--images N]
        [--batch B] [--group G] [--naive-units n] [--labels random|predicted] [--cache-mb M]
        [--threads T] [--float64] [--out results.json]

Synthetic, seeded workload (defaults: under two minutes on 2 CPU threads): the model is
`cvinterp.models.build(arch, classes, in_channels)` (torchvision AlexNet, weights=None, by
default), seeded random init, eval mode, ablated at `layer_path(arch, layer)` (AlexNet conv5 =
`features.10`, U = 256 units); N = 64 random Gaussian inputs of size x size with labels drawn
uniformly over the classes (`--labels random`) or, for a sharper agreement check, the intact
model's own predictions (`--labels predicted`: base accuracy 100%, so every prediction a unit's
zeroing flips shows up in the counts). Every unit is zeroed in turn and the correctly classified
images are counted per class, four ways:

- naive:  for each unit u, one full forward pass over all N images (batches of B) inside
  `Instrument(model, [], edit={path: zero_u})`, zero_u cloning the layer's output and zeroing
  channel u. This is slow, so it runs on only n of the U units (`--naive-units`, default 16),
  and its time is extrapolated to all U units (x U / n; every unit costs the same). Up to n / 2
  of them are units whose zeroing changes the engine's counts against the intact model (where
  a disagreement would show), the rest spread evenly over the layer;
- engine: `Ablation(model, path, device)`, `.cache(batches, cache_mb, N)` (the part below the
  cut, once; timed separately), then `.correct(single_units(U), group=G)` on all U units;
- engine before: `Ablation(..., commute=False)`, the engine before the per-channel pools moved
  below the cut: the cut stops at the ReLU after the layer, and the pools, the flatten and the
  layer above run again for every unit (AlexNet conv5: max-pool, average pool, flatten and fc6).
  Run only where the two cuts differ;
- engine without linear update: the same as the engine with `linear_update=False` (the layer
  above the cut is recomputed on the masked features instead of subtracting each unit's
  contribution). Run only where the linear update applies.

Agreement: the per-class correct counts of each naive unit must equal the engine's for that unit,
and the two engines' must be equal on all U units; the number of units whose counts differ is
printed. In float32 a rare near-tie of the two top logits can flip under the different order of
the sums (the linear update subtracts a unit's share from the intact layer output), so a handful
of differing units is possible; with `--float64` (model and inputs in double precision) exact
agreement is expected and the script exits with status 1 when any unit differs, after printing
and writing its results. On CUDA, float32 convolutions run in TF32 by default
(`torch.backends.cudnn.allow_tf32`; the header line says which), and the linear update's
contribution (an einsum, full float32) is subtracted from a TF32 convolution's output: flips are
then likelier (one unit of 192 on All-CNN-C conv6 with 10000 predicted labels on an H100; none
with TF32 off or in float64). Also printed: how many units change the per-class counts at all
against the intact model (with random labels and random weights, hardly any: the check is then
weak; `--labels predicted` makes it sharper).

Timing: one untimed warm-up forward pass of one batch through the model, the instrumented model
and each engine (a group of G units on the first chunk), then one timed run of each, CUDA
synchronised around each. Ratios: naive (extrapolated to U units) over the engine, with and
without the cache pass. Torch runs on T CPU threads (default 2).

Other models, e.g. All-CNN-C (`build('all_cnn_c', classes, in_channels)`) at conv6, where a
convolution right above the cut gets the linear update:

    .venv/bin/python benchmarks/ablation.py --arch all_cnn_c --layer conv6 --size 32 \\
        --classes 10 --in-channels 3 --images 512 --naive-units 32

The paper-scale shape on a GPU (AlexNet conv5, 256 units, tens of thousands of 224-px images;
inputs are held on the device, 0.6 MB an image in float32, and so are the cached conv5 features,
0.17 MB an image, below --cache-mb):

    .venv/bin/python benchmarks/ablation.py --device cuda --images 20000 --batch 250 \\
        --group 16 --naive-units 8 --out ablation_gpu.json
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import device_name, print_table, resolve_device, timed, write_json

from cvinterp.instrument import Instrument
from cvinterp.methods.ablation import Ablation, single_units, split_at
from cvinterp.models import build, layer_path

SEED = 0


def make_data(args, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    shape = (args.images, args.in_channels, args.size, args.size)
    return torch.randn(shape, generator=g).to(dtype)


def batches(x: torch.Tensor, y: torch.Tensor, batch: int):
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


@torch.no_grad()
def predict(model, data) -> torch.Tensor:
    return torch.cat([model(x).argmax(1) for x, _ in data])


def zero_unit(u: int):
    def zero_u(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, u] = 0
        return out

    return zero_u


@torch.no_grad()
def run_naive(model, path: str, data, units: list[int], classes: int) -> torch.Tensor:
    """(len(units), classes) correct counts, one full forward pass over the data per unit."""
    out = []
    for u in units:
        counts = torch.zeros(classes, dtype=torch.int64, device=data[0][0].device)
        with Instrument(model, [], edit={path: zero_unit(u)}):
            for x, y in data:
                right = model(x).argmax(1) == y
                counts += torch.bincount(y[right], minlength=classes)
        out.append(counts)
    return torch.stack(out)


def run_engine(model, path, device, data, args, n_images, linear_update: bool, commute: bool):
    engine = Ablation(model, path, device, linear_update=linear_update, commute=commute)
    t_cache, _ = timed(lambda: engine.cache(data, args.cache_mb, n_images), device)
    units = engine.units
    keep = single_units(units)
    # warm-up: one group of units on the first chunk only
    chunks = engine.chunks
    engine.chunks = chunks[:1]
    engine.correct(keep[: args.group], group=args.group)
    engine.chunks = chunks
    t_correct, correct = timed(lambda: engine.correct(keep, group=args.group), device)
    return {
        "engine": engine,
        "units": units,
        "cache": t_cache,
        "correct": t_correct,
        "counts": correct.cpu(),
    }


def padded(counts: torch.Tensor, classes: int) -> torch.Tensor:
    """The engine counts only the classes up to the largest label: pad to all classes."""
    return torch.nn.functional.pad(counts, (0, classes - counts.shape[1]))


def pick_units(units: int, k: int, changed: list[int]) -> list[int]:
    """k units: up to k // 2 of `changed` (evenly spread over them), then evenly spread."""
    k = max(1, min(k, units))
    take = changed[:: max(1, -(-len(changed) // (k // 2)))] if k // 2 else []
    chosen = set(take[: k // 2])
    step = units / k
    i = 0
    while len(chosen) < k:
        u = int(i * step) % units
        while u in chosen:
            u = (u + 1) % units
        chosen.add(u)
        i += 1
    return sorted(chosen)


def differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """Units (rows) whose per-class counts differ."""
    return int((a != b).any(1).sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--arch", default="alexnet", help="cvinterp.models.build name (alexnet)")
    ap.add_argument("--layer", default="conv5", help="paper-named layer (default conv5)")
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--classes", type=int, default=1000, help="model classes (default 1000)")
    ap.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    ap.add_argument("--images", type=int, default=64, help="evaluation images N (default 64)")
    ap.add_argument("--batch", type=int, default=64, help="images per batch B (default 64)")
    ap.add_argument("--group", type=int, default=16,
                    help="units ablated per engine pass G (default 16)")  # fmt: skip
    ap.add_argument("--naive-units", type=int, default=16,
                    help="units n run naively, extrapolated to all (default 16)")  # fmt: skip
    ap.add_argument("--labels", choices=["random", "predicted"], default="random",
                    help="random labels, or the intact model's predictions")  # fmt: skip
    ap.add_argument("--cache-mb", type=float, default=16384,
                    help="features kept on the device below this (default 16384)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--float64", action="store_true", help="model and inputs in float64")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(ap, args.device)
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.float64 else torch.float32
    path = layer_path(args.arch, args.layer)

    torch.manual_seed(SEED)
    model = build(args.arch, args.classes, args.in_channels).to(device, dtype).eval()
    x = make_data(args, dtype).to(device)
    n = len(x)
    g = torch.Generator().manual_seed(SEED + 1)
    y = torch.randint(args.classes, (n,), generator=g).to(device)
    data = batches(x, y, args.batch)
    if args.labels == "predicted":
        y = predict(model, data)
        data = batches(x, y, args.batch)
    predict(model, data[:1])  # warm-up
    right = predict(model, data) == y  # the intact model
    base_correct = int(right.sum())

    # the engine; the engine as it was before the per-channel pools moved below the cut (when
    # that takes another path); the engine without the linear update (when it applies)
    eng = run_engine(model, path, device, data, args, n, linear_update=True, commute=True)
    units = eng["units"]
    lin_applies = eng["engine"].linear_update
    split = eng["engine"].split
    moved = len(split_at(model, path, commute=False).lower.graph.nodes) != len(
        split.lower.graph.nodes
    )
    before = (
        run_engine(model, path, device, data, args, n, linear_update=True, commute=False)
        if moved
        else None
    )
    if lin_applies:
        nolin = run_engine(model, path, device, data, args, n, linear_update=False, commute=True)
    else:
        nolin = None
    on_host = eng["engine"].on_host
    for r in (eng, before, nolin):
        if r is not None:
            del r["engine"]

    # naive, on n units: up to half of them among the units whose ablation changes the engine's
    # counts (where a disagreement would show), the rest evenly spread over the layer
    classes = args.classes
    base_counts = torch.bincount(y[right].cpu(), minlength=classes)
    changed = (padded(eng["counts"], classes) != base_counts).any(1).nonzero().flatten()
    naive_units = pick_units(units, args.naive_units, changed.tolist())
    run_naive(model, path, data[:1], naive_units[:1], classes)  # warm-up
    t_naive, naive = timed(lambda: run_naive(model, path, data, naive_units, classes), device)
    naive = naive.cpu()
    t_naive_all = t_naive * units / len(naive_units)

    eng_counts = padded(eng["counts"], classes)
    sub = torch.tensor(naive_units)
    diff_naive = differing(naive, eng_counts[sub])
    diff_nolin_naive = (
        None if nolin is None else differing(naive, padded(nolin["counts"], classes)[sub])
    )
    diff_engines = 0 if nolin is None else differing(eng_counts, padded(nolin["counts"], classes))
    diff_before = (
        None if before is None else differing(naive, padded(before["counts"], classes)[sub])
    )
    per_unit_total = eng_counts.sum(1)
    changed_sub = int((naive != base_counts).any(1).sum())
    changed_all = len(changed)

    t_eng = eng["cache"] + eng["correct"]
    rows_t = {"engine": (eng["cache"], eng["correct"], t_eng)}
    if before is not None:
        rows_t["engine_before"] = (
            before["cache"],
            before["correct"],
            before["cache"] + before["correct"],
        )
    if nolin is not None:
        rows_t["engine_no_linear_update"] = (
            nolin["cache"],
            nolin["correct"],
            nolin["cache"] + nolin["correct"],
        )
    result = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "tf32": {
            "cudnn": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        },
        "arch": args.arch,
        "layer": args.layer,
        "path": path,
        "size": args.size,
        "classes": classes,
        "in_channels": args.in_channels,
        "images": n,
        "batch": args.batch,
        "group": args.group,
        "labels": args.labels,
        "units": units,
        "naive_units": naive_units,
        "linear_update_applies": lin_applies,
        "moved_below_cut": moved,
        "flatten_into_first": split.flatten,
        "features_on_host": on_host,
        "seconds": {
            "naive_measured": t_naive,
            "naive_extrapolated_all_units": t_naive_all,
            **{
                f"{name}_{part}": t
                for name, ts in rows_t.items()
                for part, t in zip(("cache", "correct", "total"), ts, strict=True)
            },
        },
        "ratio_naive_over_engine": t_naive_all / t_eng,
        "ratio_naive_over_engine_correct_only": t_naive_all / eng["correct"],
        "ratio_naive_over_engine_no_linear_update": (
            None if nolin is None else t_naive_all / rows_t["engine_no_linear_update"][2]
        ),
        "ratio_naive_over_engine_before": (
            None if before is None else t_naive_all / rows_t["engine_before"][2]
        ),
        "ratio_engine_before_over_engine": (
            None if before is None else rows_t["engine_before"][2] / t_eng
        ),
        "agreement": {
            "units_differing_naive_vs_engine": diff_naive,
            "units_differing_naive_vs_engine_no_linear_update": diff_nolin_naive,
            "units_differing_engine_vs_engine_no_linear_update": diff_engines,
            "units_differing_naive_vs_engine_before": diff_before,
            "compared_units_naive": len(naive_units),
        },
        "workload": {
            "base_correct": base_correct,
            "naive_units_changing_count": changed_sub,
            "all_units_changing_count": changed_all,
            "min_correct_after_ablation": int(per_unit_total.min()),
            "max_correct_after_ablation": int(per_unit_total.max()),
        },
    }

    tf32 = ""
    if device.type == "cuda" and dtype == torch.float32:
        tf32 = f" (TF32 convolutions {'on' if result['tf32']['cudnn'] else 'off'})"
    print(
        f"device {device.type} ({result['device_name']}), torch {torch.__version__}, "
        f"{result['threads']} threads, {result['dtype']}{tf32}; {args.arch} {args.layer} ({path}), "
        f"U={units} units; N={n} random {args.in_channels}x{args.size}x{args.size} inputs, "
        f"{args.labels} labels over {classes} classes; batch {args.batch}, group {args.group}; "
        f"one timed run after a warm-up"
    )
    naive_note = f"measured on {len(naive_units)} units, x{units / len(naive_units):g}"
    rows = [("method", "units", "cache s", "ablate s", "total s", "s/unit", "naive/this")]
    rows.append(("naive (extrapolated)", str(units), "", "", f"{t_naive_all:.2f}",
                 f"{t_naive_all / units:.4f}", "1.0"))  # fmt: skip
    rows.append((f"  ({naive_note})", str(len(naive_units)), "", "", f"{t_naive:.2f}",
                 f"{t_naive / len(naive_units):.4f}", ""))  # fmt: skip
    names = {
        "engine": "engine",
        "engine_before": "engine, cut at the ReLU (before)",
        "engine_no_linear_update": "engine, no linear update",
    }
    for name, (tc, ta, tt) in rows_t.items():
        rows.append((names[name], str(units), f"{tc:.2f}", f"{ta:.2f}", f"{tt:.2f}",
                     f"{tt / units:.4f}", f"{t_naive_all / tt:.1f}"))  # fmt: skip
    if nolin is None:
        rows.append(("engine, no linear update", "", "", "", "", "", "same code"))
    print_table(rows, left=1)
    print(
        f"naive/engine without the cache pass: {t_naive_all / eng['correct']:.1f}x; linear "
        f"update {'applies' if lin_applies else 'does not apply (no conv/linear right above)'}"
        + (" (through the flatten)" if split.flatten else "")
        + ("; per-channel ops moved below the cut" if moved else "")
    )
    parts = [f"naive vs engine: {diff_naive} of {len(naive_units)} units differ"]
    if before is not None:
        parts.append(f"naive vs engine before: {diff_before} of {len(naive_units)}")
    if nolin is not None:
        parts.append(f"naive vs engine without linear update: {diff_nolin_naive} of "
                     f"{len(naive_units)}")  # fmt: skip
        parts.append(f"engine vs engine without linear update: {diff_engines} of {units}")
    print("agreement (per-class correct counts): " + "; ".join(parts))
    print(
        f"sensitivity: intact model {base_correct}/{n} correct; ablation changes the counts of "
        f"{changed_sub} of the {len(naive_units)} naive units and {changed_all} of all {units} "
        f"(correct after ablation {result['workload']['min_correct_after_ablation']}.."
        f"{result['workload']['max_correct_after_ablation']})"
    )

    if args.out:
        write_json(result, args.out)
    any_diff = diff_naive or diff_engines or diff_nolin_naive or diff_before
    if any_diff and args.float64:
        raise SystemExit("float64: per-unit counts differ")
    if any_diff:
        print("note: float32 counts differ for some units (near-tie argmax flips?); "
              "rerun with --float64 for exact agreement", file=sys.stderr)  # fmt: skip
    return result


if __name__ == "__main__":
    main()
