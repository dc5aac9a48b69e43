"""Benchmark: batched activation maximisation against one unit at a time, and against lucent.

A benchmark, not a test. Run from the repository root:

    .venv/bin/python benchmarks/actmax.py [--device cpu|cuda|auto] [--arch alexnet ...]
        [--units U] [--iterations T] [--size S] [--repeats R] [--lucent batched|loop|both|off]
        [--quick] [--out results.json]

For each architecture (torchvision, weights=None, seeded random init, eval mode, parameters
frozen) it takes the first U channels of one layer (AlexNet `features.10` = conv5, SqueezeNet 1.1
`features.12` = the last Fire module) and runs T steps of Yosinski et al.'s setting 3 for each,
every image starting from the same seeded noise, in three ways:

- batched: `yosinski(unit_objective(model, layer, units), start, ...)`, all U units in one batch
  (image i maximises the centre activation of channel units[i]);
- loop:    the same call once per unit with a batch of one (same objective, start and setting);
- lucent:  torch-lucent's `render_vis` with `neuron(layer, unit)` objectives (the centre of the
  channel, as ours), T Adam steps, `transforms=[]` (its ImageNet normalisation is still applied,
  as our `to_input` does) and no resizing. "batched" is one call with `param.image(S, batch=U)`
  and the sum of `neuron(layer, units[i], batch=i)`; "loop" is one call per unit with batch 1.
  Lucent hooks every module and always runs the whole network, and its hooks see the tensor a
  module returned, which an in-place ReLU after it overwrites: it gets a deep copy of the model
  with `inplace=False` on every nn.ReLU, so that it maximises the same pre-ReLU value as ours.
  Its image is parameterised in lucent's default way (`--lucent-param fft`: a decorrelated
  Fourier basis through a sigmoid) or as plain pixels (`--lucent-param pixel`).

torch-lucent 0.1.8 pins kornia<=0.4.1 and so an old torch; it is not a dependency of this
project. To include it without touching the project's environment, install it beside it with no
dependencies and put that folder on the path:

    .venv/bin/pip install --no-deps --target /tmp/lucent-site torch-lucent kornia kornia-rs \\
        decorator ipython
    PYTHONPATH=/tmp/lucent-site .venv/bin/python benchmarks/actmax.py

Without it the lucent rows say why they are missing. Timing: an untimed warm-up of 2 steps of
every method, then R repeats, interleaved, CUDA synchronised around each, the median reported as
seconds per step per unit (wall time / (T * U)). On a CPU shared with another busy process,
torch's threads wait on each other at every small operation: a batch of one then runs many times
slower than its arithmetic; `--threads 1` avoids that. Agreement: batched and loop optimise
independent images with the same arithmetic, so their final activations and images should agree to
float rounding (batched convolutions may sum in another order), which over many steps can grow
where a max-pool or ReLU decision flips in one image; the differences are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from common import device_name, non_inplace_copy, print_table, resolve_device, timed, write_json
from torch import nn

from cvinterp.instrument import Instrument
from cvinterp.methods.actmax import YOSINSKI_SETTINGS, Result, pixel_space, unit_objective, yosinski
from cvinterp.models import Preprocessing

ARCHS = ("alexnet", "squeezenet1_1")
LAYER = {"alexnet": "features.10", "squeezenet1_1": "features.12"}
SIZE = {"alexnet": 224, "squeezenet1_1": 227}
SEED = 0
SETTING = 3  # Yosinski et al. 2015, Table 1: decay 1e-4, blur sigma 1 every 4 steps, lr 100
MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation (lucent's as well)
STD = (0.229, 0.224, 0.225)
LUCENT_MODES = ("batched", "loop", "both", "off")

# Defaults per device: (archs, units, iterations, repeats); --quick shrinks them
DEFAULTS = {
    "cpu": dict(archs=["alexnet", "squeezenet1_1"], units=8, iterations=10, repeats=1),
    "cuda": dict(archs=["alexnet", "squeezenet1_1"], units=64, iterations=50, repeats=3),
}
QUICK = dict(archs=["alexnet"], units=4, iterations=4, repeats=1)


def build(arch: str, device: torch.device) -> nn.Module:
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def race(
    runs: dict[str, Callable[[int], object]], steps: int, device: torch.device, repeats: int
) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each callable (given the number of steps) over interleaved repeats,
    after one untimed 2-step warm-up of each; plus the last output of each."""
    for fn in runs.values():
        fn(min(2, steps))
    times: dict[str, list[float]] = {name: [] for name in runs}
    outs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            t, outs[name] = timed(lambda fn=fn: fn(steps), device)
            times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}, outs


def import_lucent():
    """(render, param, objectives, version), or the reason lucent cannot be used."""
    try:
        import lucent
        from lucent.optvis import objectives, param, render
    except Exception as e:  # ImportError, or an incompatible dependency failing at import
        return f"{type(e).__name__}: {e}"
    return render, param, objectives, getattr(lucent, "__version__", "?")


def lucent_runs(lucent, twin, layer, units, size, mode, fft, device) -> dict[str, Callable]:
    """Callables steps -> (U, H, W, 3) images in [0, 1] for the lucent modes asked for."""
    render, param, objectives, _ = lucent
    name = layer.replace(".", "_")  # lucent's name for a module path

    def render_batch(objective, batch: int, steps: int) -> np.ndarray:
        # fixed_image_size=None: lucent only resizes images under 224 px (then to S itself)
        def param_f():
            return param.image(size, batch=batch, fft=fft, decorrelate=fft)

        return render.render_vis(
            twin,
            objective,
            param_f,
            transforms=[],
            thresholds=(steps,),
            progress=False,
            show_image=False,
            fixed_image_size=None if size >= 224 else size,
        )[-1]

    def batched(steps: int) -> np.ndarray:
        torch.manual_seed(SEED)
        obj = objectives.Objective.sum(
            [objectives.neuron(name, int(u), batch=i) for i, u in enumerate(units)]
        )
        return render_batch(obj, len(units), steps)

    def loop(steps: int) -> np.ndarray:
        torch.manual_seed(SEED)
        return np.concatenate(
            [render_batch(objectives.neuron(name, int(u)), 1, steps) for u in units]
        )

    runs = {}
    if mode in ("batched", "both"):
        runs["lucent batched"] = batched
    if mode in ("loop", "both"):
        runs["lucent loop"] = loop
    return runs


def bench_arch(arch, device, n_units, steps, size, repeats, lucent, lucent_mode, fft) -> dict:
    model = build(arch, device)
    layer = LAYER[arch]
    to_input, mean, bounds = pixel_space(Preprocessing(1.0, list(MEAN), list(STD)))
    mean, bounds = mean.to(device), tuple(b.to(device) for b in bounds)
    with torch.no_grad(), Instrument(model, [layer], stop_early=True) as ins:
        ins.forward(torch.zeros(1, 3, size, size, device=device))
        shape = tuple(ins[layer].shape[1:])
    if n_units > shape[0]:
        raise SystemExit(f"{arch} {layer} has {shape[0]} channels, fewer than --units {n_units}")
    units = torch.arange(n_units)
    setting = YOSINSKI_SETTINGS[SETTING]
    g = torch.Generator().manual_seed(SEED)
    # Yosinski et al. start from the mean image plus noise: in pixel units, noise around 0
    start = (torch.randn(n_units, 3, size, size, generator=g) * 10).to(device)
    batched_obj = unit_objective(model, layer, units, where="centre")
    single_obj = [unit_objective(model, layer, units[i : i + 1]) for i in range(n_units)]

    def ours_batched(t: int) -> Result:
        return yosinski(batched_obj, start, to_input, setting, bounds, iterations=t)

    def ours_loop(t: int) -> list[Result]:
        return [
            yosinski(single_obj[i], start[i : i + 1], to_input, setting, bounds, iterations=t)
            for i in range(n_units)
        ]

    runs: dict[str, Callable] = {"ours batched": ours_batched, "ours loop": ours_loop}
    twin = None
    if not isinstance(lucent, str) and lucent_mode != "off":
        twin = non_inplace_copy(model)
        runs |= lucent_runs(lucent, twin, layer, units, size, lucent_mode, fft, device)

    t0 = time.perf_counter()
    med, outs = race(runs, steps, device, repeats)
    wall = time.perf_counter() - t0

    batched: Result = outs["ours batched"]
    loop: list[Result] = outs["ours loop"]
    loop_final = torch.cat([r.final for r in loop])
    loop_images = torch.cat([r.images for r in loop])
    diff = (batched.final - loop_final).abs().cpu()
    final = {"ours batched": batched.final.cpu(), "ours loop": loop_final.cpu()}
    with torch.no_grad():  # lucent's images ([0, 1], RGB) scored by our objective
        for name in runs:
            if name.startswith("lucent"):
                img = torch.from_numpy(np.ascontiguousarray(outs[name])).permute(0, 3, 1, 2)
                pix = img.to(device, torch.float32) * 255 - mean
                final[name] = batched_obj(to_input(pix)).cpu()
    per_unit_step = {name: s / (steps * n_units) for name, s in med.items()}
    return {
        "layer": layer,
        "layer_shape": list(shape),
        "units": n_units,
        "iterations": steps,
        "size": size,
        "seconds": med,
        "seconds_per_step_per_unit": per_unit_step,
        "ratio_over_ours_batched": {n: s / med["ours batched"] for n, s in med.items()},
        "start_activation_mean": float(batched.start.mean()),
        "final_activation_mean": {n: float(v.mean()) for n, v in final.items()},
        "batched_vs_loop_max_abs_diff_final": float(diff.max()),
        "batched_vs_loop_median_abs_diff_final": float(diff.median()),
        "batched_vs_loop_units_over_1e-5": int((diff > 1e-5 * loop_final.abs().max()).sum()),
        "batched_vs_loop_max_abs_final": float(loop_final.abs().max()),
        "batched_vs_loop_max_abs_diff_images": float((batched.images - loop_images).abs().max()),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--arch", nargs="+", choices=ARCHS, help="default: alexnet squeezenet1_1")
    ap.add_argument("--units", type=int, help="channels of the layer (default: cpu 8, cuda 64)")
    ap.add_argument("--iterations", type=int, help="steps of each (default: cpu 10, cuda 50)")
    ap.add_argument("--size", type=int, help="image side (default: alexnet 224, squeezenet 227)")
    ap.add_argument("--repeats", type=int, help="timed repeats (default: cpu 1, cuda 3)")
    ap.add_argument(
        "--lucent",
        choices=LUCENT_MODES,
        default="batched",
        help="lucent: one batched call, one call per unit, both, or off",
    )
    ap.add_argument(
        "--lucent-param",
        choices=["fft", "pixel"],
        default="fft",
        help="lucent's image parameterisation (default: its own, fft)",
    )
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="alexnet, 4 units, 4 steps")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(ap, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    d = QUICK if args.quick else DEFAULTS[device.type]
    archs = args.arch or d["archs"]
    n_units = args.units or d["units"]
    steps = args.iterations or d["iterations"]
    repeats = args.repeats or d["repeats"]

    lucent = import_lucent() if args.lucent != "off" else "--lucent off"
    lucent_version = None if isinstance(lucent, str) else lucent[3]
    result = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lucent": lucent_version or f"unavailable ({lucent})",
        "lucent_mode": args.lucent,
        "lucent_param": args.lucent_param,
        "threads": torch.get_num_threads(),
        "setting": SETTING,
        "units": n_units,
        "iterations": steps,
        "repeats": repeats,
        "archs": {},
    }
    print(
        f"device {device.type} ({result['device_name']}), torch {torch.__version__}, "
        f"{result['threads']} threads; Yosinski setting {SETTING}, {n_units} units, "
        f"{steps} steps, median of {repeats} after a 2-step warm-up"
    )
    if lucent_version:
        print(
            f"torch-lucent {lucent_version}: {args.lucent}, param.image {args.lucent_param}, "
            "transforms=[], no resize, Adam lr 0.05 (its default); on a copy with "
            "out-of-place ReLUs"
        )
    else:
        print(f"torch-lucent: unavailable ({lucent})")

    for arch in archs:
        size = args.size or SIZE[arch]
        result["archs"][arch] = bench_arch(
            arch,
            device,
            n_units,
            steps,
            size,
            repeats,
            lucent,
            args.lucent,
            args.lucent_param == "fft",
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()

    rows = [
        ("arch", "layer", "method", "batch", "s total", "s/step/unit", "x batched", "final act.")
    ]
    for arch, r in result["archs"].items():
        for name, s in r["seconds"].items():
            batch = str(r["units"]) if name.endswith("batched") else "1"
            rows.append(
                (
                    arch,
                    f"{r['layer']} @{r['size']}",
                    name,
                    batch,
                    f"{s:.2f}",
                    f"{r['seconds_per_step_per_unit'][name]:.4f}",
                    f"{r['ratio_over_ours_batched'][name]:.2f}",
                    f"{r['final_activation_mean'][name]:.4g}",
                )
            )
    print_table(rows, left=3)
    print(
        "x batched: time over ours batched (loop/batched, lucent/batched); final act.: mean "
        "over units of the centre activation at the end (start "
        + ", ".join(f"{a} {r['start_activation_mean']:.3g}" for a, r in result["archs"].items())
        + "); lucent's images scored by our objective"
    )
    for arch, r in result["archs"].items():
        print(
            f"{arch}: batched vs loop, |diff| of final activations max "
            f"{r['batched_vs_loop_max_abs_diff_final']:.2e}, median "
            f"{r['batched_vs_loop_median_abs_diff_final']:.2e} (max |activation| "
            f"{r['batched_vs_loop_max_abs_final']:.2e}; "
            f"{r['batched_vs_loop_units_over_1e-5']}/{r['units']} units differ by more than "
            f"1e-5 of it); max |diff| of images (0-255 scale) "
            f"{r['batched_vs_loop_max_abs_diff_images']:.2e}"
        )

    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
